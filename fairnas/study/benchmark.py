"""A ranking study whose ground truth is a published benchmark (NAS-Bench-Macro), not training.

The stages are those of :class:`fairnas.study.RankingStudy`; its ground truth is a
:class:`BenchmarkGroundTruth`, so:

``sample``        the benchmark's distinct networks (one canonical key each): all of them, or a
                  seeded FLOPs-stratified sample -> ``archs.txt``
``ground_truth``  reads the benchmark's 3 training runs of each network (no training) and checks
                  that the search space's costs equal the file's -> ``ground_truth.csv``
``ceiling``       the benchmark against itself: run 0 vs run 1, every pair of runs, and each run
                  against the mean of the other two -> ``ceiling.json``
``supernets``     one supernet per sampler and supernet seed (``sf_seed0``, ``ef_seed1``, ...)
``report``        as the base study, on all architectures, and again on the held-out part of a
                  declared tuning split (``report/holdout/``); plus ``report/scores.csv``

:class:`BenchmarkRankingStudy` is that study with the settings of ``conf/study/nas_bench_macro.yaml``.

The benchmark's accuracies are CIFAR-10 test accuracies; the supernets score architectures on a
validation split held out of the training images, never on the test images.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fairnas.analysis.ranking import bootstrap_ci, kendall_tau
from fairnas.analysis.sampling import one_per_cost_bin
from fairnas.errors import ConfigError
from fairnas.models import CostModel, SearchSpace
from fairnas.models.space import Arch
from fairnas.nas_bench import MacroEntry, arch_to_key, canonical_key, distinct_keys, key_to_arch, load_macro
from fairnas.study.ground_truth import GroundTruthSource, GroundTruthTable
from fairnas.study.ranking_study import RankingStudy
from fairnas.utils import write_text_atomic

log = logging.getLogger("fairnas")

BENCHMARK_RUNS = (0, 1, 2)
"""The benchmark's training runs of each network (its ``test_acc`` list), used as the study's seeds."""


class BenchmarkGroundTruth(GroundTruthSource):
    """NAS-Bench-Macro as a study's ground truth: its 3 training runs of each network are the seeds.

    Args:
        benchmark_file: The NAS-Bench-Macro JSON (plain or ``.gz``); default: the shipped copy.
        sample_size: Distinct networks scored (a seeded FLOPs-stratified sample); None: all 3969.
        sample_seed: Seed of that sample.
    """

    kind = "benchmark"

    def __init__(self, benchmark_file: str | None = None, sample_size: int | None = None, sample_seed: int = 0) -> None:
        self.benchmark_file = benchmark_file
        self.sample_size = None if sample_size is None else int(sample_size)
        if self.sample_size is not None and self.sample_size < 2:
            raise ConfigError(f"sample_size: at least 2 architectures (or null: all), got {sample_size}")
        self.sample_seed = int(sample_seed)
        self.seeds = list(BENCHMARK_RUNS)
        self._bench: dict[str, MacroEntry] | None = None

    @property
    def bench(self) -> dict[str, MacroEntry]:
        if self._bench is None:
            self._bench = load_macro(self.benchmark_file)
        return self._bench

    def check_space(self, space: SearchSpace) -> None:
        if (space.num_layers, space.num_choices) != (8, 3):
            raise ConfigError(
                f"a NAS-Bench-Macro study needs search_space=nas_bench_macro (8 layers x 3 choices), "
                f"got {space.name!r} ({space.num_layers} x {space.num_choices})"
            )

    def draw(self, space: SearchSpace) -> list[Arch]:
        """The distinct networks: all, or one per FLOPs bin.

        The sample sorts the canonical keys by FLOPs, cuts them into ``sample_size`` bins of equal
        count and draws one network per bin (``sample_seed``), so every size is represented.
        """
        keys = distinct_keys(self.bench)
        if self.sample_size is not None and self.sample_size < len(keys):
            keys = sorted(one_per_cost_bin(keys, lambda k: self.bench[k].flops, self.sample_size, self.sample_seed))
        return [key_to_arch(k) for k in keys]

    def check_sample(self, archs: Sequence[Arch], path: Path) -> None:
        keys = [arch_to_key(a) for a in archs]
        bad = [k for k in keys if canonical_key(k) != k]
        if bad:
            raise ConfigError(
                f"{path} lists architectures that are not canonical benchmark keys (e.g. "
                f"{'-'.join(bad[0])}, canonical {'-'.join(canonical_key(bad[0]))}): score each network once"
            )

    def collect(self, study: RankingStudy) -> dict[str, int]:
        """Reads the benchmark's accuracies of the study's networks (no training) -> ``ground_truth.csv``."""
        table = self.table(study)
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["key", "arch", "flops", "params", *table.seed_columns, "mean"])
        for row, mean in zip(table.rows, table.mean, strict=True):
            writer.writerow([row["key"], row["arch"], row["madds"], row["params"],
                             *(row[c] for c in table.seed_columns), float(mean)])  # fmt: skip
        write_text_atomic(study.dir / "ground_truth.csv", text.getvalue())
        log.info("ground truth of %d networks read from the benchmark (no training)", len(table))
        return {"skipped": 0, "ran": 0, "read": len(table)}

    def table(self, study: RankingStudy) -> GroundTruthTable:
        """The benchmark's accuracy (fraction) of each network and run, with its FLOPs and params.

        Raises:
            ConfigError: the search space's cost model disagrees with the file for a network (a
                different space, or a changed block), so its networks are not the benchmark's.
        """
        space = study.space
        cost = CostModel.create(space)
        rows = []
        for arch in study.sample():
            parsed = space.parse_arch(arch)
            key = arch_to_key(parsed)
            entry = self.bench[key]
            if (cost.madds(parsed), cost.params(parsed)) != (entry.flops, entry.params):
                raise ConfigError(
                    f"search space {space.name!r} does not build the benchmark's network {key}: its cost model "
                    f"gives {cost.madds(parsed)} MAdds / {cost.params(parsed)} params, the file {entry.flops} / "
                    f"{entry.params}; use search_space=nas_bench_macro"
                )
            row: dict[str, Any] = {"arch": arch, "key": key, "madds": entry.flops, "params": entry.params}
            row.update({f"seed{s}": entry.test_acc[s] / 100.0 for s in self.seeds})
            rows.append(row)
        return GroundTruthTable(rows, [f"seed{s}" for s in self.seeds])

    def ceiling_extras(self, table: GroundTruthTable, n_boot: int, seed: int) -> dict[str, Any]:
        """Each run against the mean of the other two (``one_vs_rest``)."""
        columns = table.seed_columns
        rest: dict[str, Any] = {}
        for column in columns:
            others = table[[c for c in columns if c != column]].mean(axis=1)
            estimate, low, high = bootstrap_ci(kendall_tau, table[column], others, n_boot=n_boot, seed=seed)
            rest[f"{column}_vs_mean_of_others"] = {"kendall_tau": estimate, "low": low, "high": high}
        log.info(
            "benchmark ceiling, one run vs the mean of the other two: %s",
            ", ".join(f"{k.split('_')[0]} {v['kendall_tau']:.3f}" for k, v in rest.items()),
        )
        return {"one_vs_rest": rest}

    def describe(self) -> str:
        return "from NAS-Bench-Macro (CIFAR-10 test accuracy of its training runs 0, 1, 2; nothing trained here)"

    def design(self, study: RankingStudy) -> dict[str, Any]:
        return {
            "ground_truth": "NAS-Bench-Macro (3 training runs per network, CIFAR-10 test accuracy)",
            "architectures": len(study.sample()),
            "sample_size": self.sample_size,
            "sample_seed": self.sample_seed,
            "standalone_seeds": self.seeds,
        }

    def write_report_extras(
        self, out_dir: Path, truth: GroundTruthTable, oneshot: Mapping[str, Mapping[str, float]]
    ) -> None:
        """``scores.csv``: each network's canonical key, the benchmark's mean accuracy, each one-shot accuracy."""
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["key", "arch", "flops", "params", "benchmark_mean_acc", *(f"oneshot_{n}" for n in oneshot)])
        for row, mean in zip(truth.rows, truth.mean, strict=True):
            writer.writerow([row["key"], row["arch"], row["madds"], row["params"], float(mean),
                             *(accs[row["arch"]] for accs in oneshot.values())])  # fmt: skip
        write_text_atomic(out_dir / "scores.csv", text.getvalue())


class BenchmarkRankingStudy(RankingStudy):
    """A ranking study of NAS-Bench-Macro: a :class:`RankingStudy` whose source is a :class:`BenchmarkGroundTruth`.

    Only the constructor differs (the settings of ``conf/study/nas_bench_macro.yaml``).

    Args:
        benchmark_file: The NAS-Bench-Macro JSON (plain or ``.gz``); default: the shipped copy.
        sample_size: Distinct networks scored (a seeded FLOPs-stratified sample); None: all 3969.
        sample_seed: Seed of that sample, of the histogram's random sample and of the tuning split.
        supernet_seeds: Seeds of the supernets: every entry of ``supernets`` is trained once per seed.
        tuning_fraction: Share of the architectures declared, before any score is read, as the
            only ones anything may be tuned on; the report is repeated on the rest.
        data_root: If given, ``dataset.root=<data_root>`` is added to every training run.
        **kwargs: See :class:`fairnas.study.RankingStudy` (``seeds``, ``standalone_overrides``,
            ``probe``, ``min_ceiling`` and ``supernet_seed`` do not apply: the seeds are the
            benchmark's 3 runs, and nothing is trained stand-alone).
    """

    def __init__(
        self,
        out_dir: str,
        space: SearchSpace,
        space_name: str,
        benchmark_file: str | None = None,
        sample_size: int | None = None,
        sample_seed: int = 0,
        supernet_seeds: Sequence[int] = (0,),
        tuning_fraction: float = 0.2,
        data_root: str | None = None,
        train_overrides: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        if kwargs.pop("min_ceiling", None) is not None:
            raise ConfigError(
                "study.min_ceiling does not apply to a benchmark study (its ground truth is not trained: no design "
                "of it to change): leave it out"
            )
        if kwargs.pop("supernet_seed", None) is not None:
            raise ConfigError(
                "study.supernet_seed does not apply to a benchmark study (every supernet is trained once per seed of "
                "study.supernet_seeds): give study.supernet_seeds=[...] instead"
            )
        super().__init__(
            out_dir,
            space,
            space_name,
            source=BenchmarkGroundTruth(benchmark_file, sample_size, sample_seed),
            train_overrides=[*train_overrides, *([f"dataset.root={data_root}"] if data_root else [])],
            supernet_seeds=supernet_seeds,
            tuning_fraction=tuning_fraction,
            **kwargs,
        )
