"""A ranking study whose ground truth is a published benchmark (NAS-Bench-Macro), not training.

The stages are those of :class:`fairnas.study.RankingStudy`, except:

``sample``        the benchmark's distinct networks (one canonical key each): all of them, or a
                  seeded FLOPs-stratified sample -> ``archs.txt``
``ground_truth``  reads the benchmark's 3 training runs of each network (no training) and checks
                  that the search space's costs equal the file's -> ``ground_truth.csv``
``ceiling``       the benchmark against itself: run 0 vs run 1, every pair of runs, and each run
                  against the mean of the other two -> ``ceiling.json``
``supernets``     one supernet per sampler and supernet seed (``sf_seed0``, ``ef_seed1``, ...)
``report``        as the base study, on all architectures, and again on the held-out part of a
                  declared tuning split (``report/holdout/``)

The benchmark's accuracies are CIFAR-10 test accuracies; the supernets score architectures on a
validation split held out of the training images, never on the test images.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fairnas.analysis import read_archs, write_archs
from fairnas.analysis.ranking import bootstrap_ci, kendall_tau
from fairnas.analysis.sampling import one_per_cost_bin
from fairnas.errors import ConfigError
from fairnas.models import CostModel, SearchSpace
from fairnas.nas_bench import arch_to_key, canonical_key, distinct_keys, key_to_arch, load_macro
from fairnas.study.ground_truth import GroundTruth
from fairnas.study.ranking_study import RankingStudy
from fairnas.study.runner import Job
from fairnas.utils import write_json_atomic, write_text_atomic

log = logging.getLogger("fairnas")

BENCHMARK_RUNS = (0, 1, 2)
"""The benchmark's training runs of each network (its ``test_acc`` list), used as the study's seeds."""


class BenchmarkRankingStudy(RankingStudy):
    """A ranking study of NAS-Bench-Macro: the benchmark file is the ground truth.

    Args:
        benchmark_file: The NAS-Bench-Macro JSON (plain or ``.gz``); default: the shipped copy.
        sample_size: Distinct networks scored (a seeded FLOPs-stratified sample); None: all 3969.
        supernet_seeds: Seeds of the supernets: every entry of ``supernets`` is trained once per seed.
        tuning_fraction: Share of the architectures declared, before any score is read, as the
            only ones anything may be tuned on; the report is repeated on the rest.
        data_root: If given, ``dataset.root=<data_root>`` is added to every training run.
        **kwargs: See :class:`fairnas.study.RankingStudy` (``seeds``, ``min_ceiling`` and
            ``probe`` do not apply: the seeds are the benchmark's 3 runs).
    """

    def __init__(
        self,
        out_dir: str,
        space: SearchSpace,
        space_name: str,
        benchmark_file: str | None = None,
        sample_size: int | None = None,
        supernet_seeds: Sequence[int] = (0,),
        tuning_fraction: float = 0.2,
        data_root: str | None = None,
        train_overrides: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        for key in ("seeds", "min_ceiling", "probe", "standalone_overrides", "supernet_seed"):
            if kwargs.pop(key, None) is not None:
                raise ConfigError(f"study.{key} does not apply to a benchmark study (its ground truth is not trained)")
        overrides = [*train_overrides, *([f"dataset.root={data_root}"] if data_root else [])]
        super().__init__(
            out_dir, space, space_name, train_overrides=overrides, sample_size=0, seeds=BENCHMARK_RUNS, **kwargs
        )
        if (space.num_layers, space.num_choices) != (8, 3):
            raise ConfigError(
                f"a NAS-Bench-Macro study needs search_space=nas_bench_macro (8 layers x 3 choices), "
                f"got {space.name!r} ({space.num_layers} x {space.num_choices})"
            )
        self.benchmark_file = benchmark_file
        self.sample_size = None if sample_size is None else int(sample_size)
        if self.sample_size is not None and self.sample_size < 2:
            raise ConfigError(f"sample_size: at least 2 architectures (or null: all), got {sample_size}")
        if not 0.0 <= float(tuning_fraction) < 1.0:
            raise ConfigError(f"tuning_fraction must be in [0, 1), got {tuning_fraction}")
        self.tuning_fraction = float(tuning_fraction)
        seeds = [int(s) for s in supernet_seeds]
        if not seeds or len(set(seeds)) != len(seeds):
            raise ConfigError(f"supernet_seeds: need one or more distinct seeds, got {list(supernet_seeds)}")
        base = dict(self.supernet_runs)
        self.supernet_runs = {f"{name}_seed{s}": overrides for name, overrides in base.items() for s in seeds}
        self._supernet_seeds = {f"{name}_seed{s}": s for name in base for s in seeds}
        self._bench: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the benchmark
    @property
    def bench(self) -> dict[str, Any]:
        if self._bench is None:
            self._bench = load_macro(self.benchmark_file)
        return self._bench

    def sample(self) -> list[str]:
        """The distinct networks scored: ``archs.txt`` if it exists, else all or a FLOPs-stratified sample.

        The sample sorts the canonical keys by FLOPs, cuts them into ``sample_size`` bins of equal
        count and draws one network per bin (``sample_seed``), so every size is represented.
        """
        if self._archs is not None:
            return self._archs
        if self.archs_file.is_file():
            archs = read_archs(self.archs_file, self.space)
            keys = [arch_to_key(a) for a in archs]
            bad = [k for k in keys if canonical_key(k) != k]
            if bad:
                raise ConfigError(
                    f"{self.archs_file} lists architectures that are not canonical benchmark keys (e.g. "
                    f"{'-'.join(bad[0])}, canonical {'-'.join(canonical_key(bad[0]))}): score each network once"
                )
            log.info("using the %d architectures of %s", len(archs), self.archs_file)
        else:
            keys = distinct_keys(self.bench)
            if self.sample_size is not None and self.sample_size < len(keys):
                keys = sorted(one_per_cost_bin(keys, lambda k: self.bench[k].flops, self.sample_size, self.sample_seed))
            archs = [key_to_arch(k) for k in keys]
            write_archs(archs, self.archs_file, self.space)
            log.info("%d distinct networks of the benchmark in %s", len(archs), self.archs_file)
        self._archs = [self.space.format_arch(a) for a in archs]
        return self._archs

    def ground_truth(self) -> dict[str, int]:
        """Reads the benchmark's accuracies of the study's networks (no training) -> ``ground_truth.csv``."""
        table = self.ground_truth_table()
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["key", "arch", "flops", "params", *table.seed_columns, "mean"])
        for row, mean in zip(table.rows, table.mean, strict=True):
            writer.writerow([row["key"], row["arch"], row["madds"], row["params"],
                             *(row[c] for c in table.seed_columns), float(mean)])  # fmt: skip
        write_text_atomic(self.dir / "ground_truth.csv", text.getvalue())
        log.info("ground truth of %d networks read from the benchmark (no training)", len(table))
        return {"skipped": 0, "ran": 0, "read": len(table)}

    def ground_truth_table(self) -> GroundTruth:
        """The benchmark's accuracy (fraction) of each network and run, with its FLOPs and params.

        Raises:
            ConfigError: the search space's cost model disagrees with the file for a network (a
                different space, or a changed block), so its networks are not the benchmark's.
        """
        cost = CostModel.create(self.space)
        rows = []
        for arch in self.sample():
            key = arch_to_key(self.space.parse_arch(arch))
            entry = self.bench[key]
            parsed = self.space.parse_arch(arch)
            if (cost.madds(parsed), cost.params(parsed)) != (entry.flops, entry.params):
                raise ConfigError(
                    f"search space {self.space.name!r} does not build the benchmark's network {key}: its cost model "
                    f"gives {cost.madds(parsed)} MAdds / {cost.params(parsed)} params, the file {entry.flops} / "
                    f"{entry.params}; use search_space=nas_bench_macro"
                )
            row: dict[str, Any] = {"arch": arch, "key": key, "madds": entry.flops, "params": entry.params}
            row.update({f"seed{s}": entry.test_acc[s] / 100.0 for s in self.seeds})
            rows.append(row)
        return GroundTruth(rows, [f"seed{s}" for s in self.seeds])

    def ceiling(self, table: GroundTruth | None = None) -> dict[str, Any]:
        """The base ceiling (run 0 vs run 1, all pairs of runs) plus each run against the mean of the other two."""
        table = table if table is not None else self.ground_truth_table()
        result = super().ceiling(table)
        columns = table.seed_columns
        rest: dict[str, Any] = {}
        for column in columns:
            others = table[[c for c in columns if c != column]].mean(axis=1)
            estimate, low, high = bootstrap_ci(
                kendall_tau, table[column], others, n_boot=self.bootstrap, seed=self.bootstrap_seed
            )
            rest[f"{column}_vs_mean_of_others"] = {"kendall_tau": estimate, "low": low, "high": high}
        result["one_vs_rest"] = rest
        write_json_atomic(self.dir / "ceiling.json", result)
        self._ceiling = result
        log.info(
            "benchmark ceiling, one run vs the mean of the other two: %s",
            ", ".join(f"{k.split('_')[0]} {v['kendall_tau']:.3f}" for k, v in rest.items()),
        )
        return result

    def supernets(self) -> dict[str, int]:
        """Trains one supernet per sampler and seed, all with the same recipe and data."""
        jobs = [
            Job(
                "train.py",
                self.supernet_dir(name),
                (*self._train_base(), *overrides, f"seed={self._supernet_seeds[name]}"),
                True,
            )
            for name, overrides in self.supernet_runs.items()
        ]
        return self._jobs(jobs)

    # ------------------------------------------------------------------ report
    def tuning_split(self) -> tuple[list[str], list[str]]:
        """The declared (tuning, held-out) split of the study's architectures, seeded by ``sample_seed``.

        Written to ``tuning_split.json`` the first time and read back after, so it never moves.
        """
        path = self.dir / "tuning_split.json"
        archs = self.sample()
        if path.is_file():
            split = json.loads(path.read_text())
            return list(split["tuning"]), list(split["holdout"])
        n_tune = int(round(self.tuning_fraction * len(archs)))
        order = np.random.default_rng([self.sample_seed, 1]).permutation(len(archs))
        tuning = sorted(archs[i] for i in order[:n_tune])
        holdout = [a for a in archs if a not in set(tuning)]
        write_json_atomic(path, {"fraction": self.tuning_fraction, "tuning": tuning, "holdout": holdout})
        return tuning, holdout

    def report(self) -> dict[str, Any]:
        """The base report on all architectures, then on the held-out ones (``report/holdout/``)."""
        from fairnas.study.report import write_report

        self.tuning_split()  # declared before any one-shot score is read
        results = super().report()
        _, holdout = self.tuning_split()
        if self.tuning_fraction > 0 and len(holdout) >= 2:
            truth = self.ground_truth_table()
            keep = set(holdout)
            sub = GroundTruth([r for r in truth.rows if r["arch"] in keep], truth.seed_columns)
            oneshot = {name: self._oneshot_accuracies(name, "sample", holdout) for name in self.supernet_runs}
            results["holdout"] = write_report(
                self.dir / "report" / "holdout",
                truth=sub,
                ceiling=super().ceiling(sub),
                oneshot=oneshot,
                histograms={},
                similarity={},
                choice_names=[str(c) for c in self.space.searchable_layers[0].choices],
                top_k=self.top_k,
                n_boot=self.bootstrap,
                seed=self.bootstrap_seed,
                design={**self._design(), "subset": f"held-out {len(holdout)} of {len(self.sample())}"},
                truth_source=f"held out of the tuning split ({len(holdout)} of {len(self.sample())}), "
                + self._truth_source(),
            )
            self.ceiling(truth)  # ceiling.json keeps the ceiling of all architectures
        scores = self.dir / "report" / "scores.csv"
        self._write_scores(scores)
        return results

    def _write_scores(self, path: Path) -> None:
        """Every scored network: canonical key, the benchmark's mean accuracy, each supernet's one-shot accuracy."""
        truth = self.ground_truth_table()
        oneshot = {name: self._oneshot_accuracies(name, "sample", list(truth["arch"])) for name in self.supernet_runs}
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["key", "arch", "flops", "params", "benchmark_mean_acc", *(f"oneshot_{n}" for n in oneshot)])
        for row, mean in zip(truth.rows, truth.mean, strict=True):
            writer.writerow([row["key"], row["arch"], row["madds"], row["params"], float(mean),
                             *(accs[row["arch"]] for accs in oneshot.values())])  # fmt: skip
        write_text_atomic(path, text.getvalue())

    def _truth_source(self) -> str:
        return "from NAS-Bench-Macro (CIFAR-10 test accuracy of its training runs 0, 1, 2; nothing trained here)"

    def _design(self) -> dict[str, Any]:
        design = super()._design()
        design.update(
            ground_truth="NAS-Bench-Macro (3 training runs per network, CIFAR-10 test accuracy)",
            architectures=len(self.sample()),
            sample_size=self.sample_size,
            supernet_seeds=sorted(set(self._supernet_seeds.values())),
            tuning_fraction=self.tuning_fraction,
        )
        design.pop("standalone_overrides", None)
        design.pop("supernet_seed", None)
        return design
