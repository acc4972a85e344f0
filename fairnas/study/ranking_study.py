"""The ranking study: does a supernet rank architectures as training them from scratch does?

Stages, each resumable (finished runs are skipped) and runnable on its own:

``sample``        the architectures the ground truth scores (by default a seeded, MAdds-stratified
                  sample) -> ``archs.txt``
``ground_truth``  their true accuracy with each seed: by default every sampled architecture trained
                  stand-alone with each seed -> ``ground_truth/<arch>/seed<k>/``
``ceiling``       the ground truth against itself (seed halves): how well any evaluator could rank -> ``ceiling.json``
``supernets``     one supernet per sampler (and supernet seed), same data and epochs -> ``supernets/<name>/``
``oneshot``       each supernet evaluates the sampled architectures and a large random sample -> ``oneshot/<name>/``
``report``        statistics, paired bootstraps, proxies, plots, block similarity -> ``report/``, and again
                  on the held-out part of a declared tuning split -> ``report/holdout/``

Where the ground truth comes from is the study's :class:`~fairnas.study.ground_truth.GroundTruthSource`
(stand-alone training, :class:`~fairnas.study.ground_truth.TrainedGroundTruth`, unless another is
given, such as :class:`~fairnas.study.benchmark.BenchmarkGroundTruth`); every other stage is the same
for all sources.

Every training or search run is an ordinary ``train.py`` / ``search.py`` run; the exact command
lines are appended to ``commands.sh``.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fairnas.analysis import read_archs, write_archs
from fairnas.analysis.ceiling import halving_taus, predicted_ceiling
from fairnas.analysis.ranking import bootstrap_ci, kendall_tau, pearson_r, spearman_rho
from fairnas.errors import ConfigError
from fairnas.models import SearchSpace
from fairnas.study.ground_truth import GroundTruthSource, GroundTruthTable, TrainedGroundTruth
from fairnas.study.runner import Job, run_jobs
from fairnas.utils import write_json_atomic

log = logging.getLogger("fairnas")

STAGES = ("sample", "ground_truth", "ceiling", "supernets", "oneshot", "report")


class RankingStudy:
    """A ranking study of one search space and dataset (see the module docstring for the stages).

    Args:
        out_dir: The study directory (fixed, so that a rerun resumes it).
        space: The search space.
        space_name: Its config name, passed to ``train.py`` as ``search_space=<name>``.
        source: Where the ground truth comes from (a :class:`~fairnas.study.ground_truth.GroundTruthSource`);
            None: stand-alone training, a :class:`~fairnas.study.ground_truth.TrainedGroundTruth` of
            ``sample_size``, ``sample_seed``, ``num_bins``, ``seeds``, ``standalone_overrides`` and
            ``probe`` (which apply only then; None: its defaults, 40 architectures, seed 0, seeds 0 and 1).
        train_overrides: Overrides of every training run, stand-alone and supernet alike (dataset,
            its fixed ``split_seed``, epochs, ...): the same recipe and data for all.
        sample_size: Number of architectures in the stand-alone ground truth.
        sample_seed: Seed of its stratified sample.
        num_bins: MAdds bins of the stratified sample (default: ``sample_size``).
        seeds: Stand-alone seeds per architecture (initialisation and data order; the validation
            split is fixed by ``split_seed`` in ``train_overrides``).
        standalone_overrides: Extra overrides of the stand-alone runs only.
        probe: Train and score only the first ``probe`` architectures of the ground truth's seeded
            order (a spread subset): a cheap ceiling measurement for choosing the design
            (epochs, seeds) before the whole ground truth is paid for. The report needs ``null``.
        supernets: Name -> overrides of that supernet's run (e.g. ``{"sf": ["sampler=sf"]}``).
        supernet_seed: Seed of every supernet run (None: 0).
        supernet_seeds: Instead of ``supernet_seed``: every entry of ``supernets`` is trained once
            per seed, as ``<name>_seed<k>``.
        search_overrides: Overrides of every one-shot evaluation (``search.py``).
        histogram_samples: Size of the uniform random sample each supernet evaluates for its
            accuracy histogram (0: none); drawn with the source's ``sample_seed``.
        histogram_overrides: Extra ``search.py`` overrides of the histogram runs (e.g. fewer validation batches).
        similarity_batches: Validation batches fed to the choice blocks for the similarity analysis (0: none).
        bootstrap: Bootstrap replicates of every interval.
        bootstrap_seed: Seed of the bootstrap resampling.
        top_k: The k of the top-k precisions.
        tuning_fraction: Share of the architectures declared, before any one-shot score is read, as
            the only ones anything may be tuned on (``tuning_split.json``); the report is repeated
            on the rest. None: no tuning split.
        min_ceiling: The gate of the ``supernets`` stage: it refuses to train (a ConfigError naming
            the measured ceiling) while the ceiling's Kendall tau (pre-declared halves) is below
            this, since no supernet could then be shown to rank better or worse than another.
            None: no gate.
        allow_datasets: Datamodule classes from outside fairnas (import paths) that the supernets'
            checkpoints may name; passed on to every ``search.py`` run (see ``conf/search.yaml``).
        parallel: Runs at a time.
        threads_per_job: CPU threads of each run (``OMP_NUM_THREADS``; null leaves it to torch).
        python: Interpreter of the runs (default: this one).
        root: Directory holding ``train.py`` and ``search.py``.
        launcher: A Hydra launcher (``hydra/launcher=<name>``, e.g. ``slurm``) that runs every
            training and search job instead of a local process; None: local processes.
        launcher_overrides: Settings of that launcher (e.g. ``hydra.launcher.partition=gpu``).
    """

    def __init__(
        self,
        out_dir: str,
        space: SearchSpace,
        space_name: str,
        source: GroundTruthSource | None = None,
        train_overrides: Sequence[str] = (),
        sample_size: int | None = None,
        sample_seed: int | None = None,
        num_bins: int | None = None,
        seeds: Sequence[int] | None = None,
        standalone_overrides: Sequence[str] | None = None,
        probe: int | None = None,
        supernets: Mapping[str, Sequence[str]] | None = None,
        supernet_seed: int | None = None,
        supernet_seeds: Sequence[int] | None = None,
        search_overrides: Sequence[str] = (),
        histogram_samples: int = 500,
        histogram_overrides: Sequence[str] = (),
        similarity_batches: int = 4,
        bootstrap: int = 2000,
        bootstrap_seed: int = 0,
        top_k: Sequence[int] = (5, 10),
        tuning_fraction: float | None = None,
        min_ceiling: float | None = None,
        allow_datasets: Sequence[str] = (),
        parallel: int = 1,
        threads_per_job: int | None = None,
        python: str | None = None,
        root: str = ".",
        launcher: str | None = None,
        launcher_overrides: Sequence[str] = (),
    ) -> None:
        standalone = {"sample_size": sample_size, "sample_seed": sample_seed, "num_bins": num_bins, "seeds": seeds,
                      "standalone_overrides": standalone_overrides, "probe": probe}  # fmt: skip
        standalone = {key: value for key, value in standalone.items() if value is not None}
        if source is None:
            source = TrainedGroundTruth(**standalone)
        elif standalone:
            keys, one = ", ".join(f"study.{key}" for key in standalone), len(standalone) == 1
            if isinstance(source, TrainedGroundTruth):
                raise ConfigError(
                    f"{keys}: the study was given its ground truth ({type(source).__name__}); set "
                    f"{'it' if one else 'them'} there, not on the study as well"
                )
            raise ConfigError(
                f"{keys} {'does' if one else 'do'} not apply to a {source.kind} study (its ground truth is not "
                f"trained stand-alone): leave {'it' if one else 'them'} out"
            )
        source.check_space(space)
        self.source = source
        self.dir = Path(out_dir)
        self.space = space
        self.space_name = space_name
        self.train_overrides = [str(o) for o in train_overrides]
        if supernet_seed is not None and supernet_seeds is not None:
            raise ConfigError(
                "give study.supernet_seed (one run per supernet) or study.supernet_seeds (one run per supernet and "
                f"seed), not both: got {supernet_seed} and {list(supernet_seeds)}"
            )
        base = {str(k): [str(o) for o in v] for k, v in (supernets or {"sf": ["sampler=sf"]}).items()}
        self.supernet_seed = int(supernet_seed or 0)
        if supernet_seeds is None:
            self.supernet_runs = base
            self._supernet_seeds = {name: self.supernet_seed for name in base}
        else:
            per_seed = [int(s) for s in supernet_seeds]
            if not per_seed or len(set(per_seed)) != len(per_seed):
                raise ConfigError(f"supernet_seeds: need one or more distinct seeds, got {list(supernet_seeds)}")
            self.supernet_runs = {f"{name}_seed{s}": overrides for name, overrides in base.items() for s in per_seed}
            self._supernet_seeds = {f"{name}_seed{s}": s for name in base for s in per_seed}
        self._per_seed_supernets = supernet_seeds is not None
        self.search_overrides = [str(o) for o in search_overrides]
        self.histogram_samples = int(histogram_samples)
        self.histogram_overrides = [str(o) for o in histogram_overrides]
        self.similarity_batches = int(similarity_batches)
        self.bootstrap, self.bootstrap_seed = int(bootstrap), int(bootstrap_seed)
        self.top_k = [int(k) for k in top_k]
        if tuning_fraction is not None and not 0.0 <= float(tuning_fraction) < 1.0:
            raise ConfigError(f"tuning_fraction must be in [0, 1) (or null: no tuning split), got {tuning_fraction}")
        self.tuning_fraction = None if tuning_fraction is None else float(tuning_fraction)
        if min_ceiling is not None and not -1.0 <= float(min_ceiling) <= 1.0:
            raise ConfigError(f"min_ceiling is a Kendall tau in [-1, 1] (or null: no gate), got {min_ceiling}")
        self.min_ceiling = None if min_ceiling is None else float(min_ceiling)
        self.allow_datasets = [str(a) for a in allow_datasets]
        self._archs: list[str] | None = None
        self._ceiling: dict[str, Any] | None = None  # the last ceiling computed by this object
        self._run = {
            "parallel": int(parallel), "threads_per_job": threads_per_job, "python": python, "root": root,
            "launcher": launcher, "launcher_overrides": [str(o) for o in launcher_overrides],
        }  # fmt: skip

    @property
    def seeds(self) -> list[int]:
        """The ground truth's runs of each architecture (its table's columns ``seed<k>``)."""
        return self.source.seeds

    @property
    def sample_seed(self) -> int:
        """The source's sample seed, which also seeds the histogram's random sample and the tuning split."""
        return self.source.sample_seed

    # ------------------------------------------------------------------ paths
    @property
    def archs_file(self) -> Path:
        return self.dir / "archs.txt"

    def standalone_dir(self, arch: str, seed: int) -> Path:
        return self.dir / "ground_truth" / arch / f"seed{seed}"

    def supernet_dir(self, name: str) -> Path:
        return self.dir / "supernets" / name

    def supernet_checkpoint(self, name: str) -> Path:
        return self.supernet_dir(name) / "checkpoints" / "last.ckpt"

    def oneshot_dir(self, name: str, kind: str) -> Path:
        return self.dir / "oneshot" / name / kind

    # ------------------------------------------------------------------ stages
    def run(self, stages: Sequence[str]) -> dict[str, Any]:
        """Runs the given stages in the canonical order; returns what each returned."""
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown}; choose from {list(STAGES)} (or 'all')")
        self.dir.mkdir(parents=True, exist_ok=True)
        return {stage: getattr(self, stage)() for stage in STAGES if stage in stages}

    def sample(self) -> list[str]:
        """The study's architectures: read from ``archs.txt`` if it exists, else drawn by the source and written there.

        An existing file is kept as it is (it may be hand-edited, as long as the source can score
        it), so a resumed study never changes its architectures behind finished runs.
        """
        if self._archs is not None:
            return self._archs
        if self.archs_file.is_file():
            archs = read_archs(self.archs_file, self.space)
            self.source.check_sample(archs, self.archs_file)
            log.info("using the %d architectures of %s", len(archs), self.archs_file)
        else:
            archs = self.source.draw(self.space)
            write_archs(archs, self.archs_file, self.space)
            log.info("sampled %d architectures into %s", len(archs), self.archs_file)
        self._archs = [self.space.format_arch(a) for a in archs]
        return self._archs

    def ground_truth(self) -> dict[str, int]:
        """The true accuracy of every architecture with every seed: trained, or read (see the source)."""
        return self.source.collect(self)

    def ceiling(self, table: GroundTruthTable | None = None) -> dict[str, Any]:
        """How well the ground truth ranks itself: the first half of the seeds against the second.

        With seeds {0, 1} this is the tau between seed 0 and seed 1. A supernet cannot be shown
        to rank better than this, so the study's design is judged by it before supernets are trained.
        The source may add entries of its own (e.g. each run against the mean of the others).
        """
        table = table if table is not None else self.ground_truth_table()
        result = self._seed_halves(table)
        result.update(self.source.ceiling_extras(table, self.bootstrap, self.bootstrap_seed))
        write_json_atomic(self.dir / "ceiling.json", result)
        self._ceiling = result
        halvings = result["all_halvings"]
        log.info(
            "ceiling (seeds %s vs %s, n=%d): tau %.3f [%.3f, %.3f]; over %d halving%s of the seeds %.3f (sd %.3f); "
            "accuracy %.2f-%.2f%%, std across archs %.2f pp, seed std %.2f pp",
            *result["halves"], result["n"], result["kendall_tau"], result["kendall_tau_low"],
            result["kendall_tau_high"], halvings["count"], "" if halvings["count"] == 1 else "s",
            halvings["kendall_tau_mean"], halvings["kendall_tau_std"],
            100 * result["acc_range"][0], 100 * result["acc_range"][1],
            100 * result["acc_std_across_archs"], 100 * result["seed_std"],
        )  # fmt: skip
        return result

    def supernets(self) -> dict[str, int]:
        """Trains one supernet per entry of ``supernets`` (and seed), all on the same data for the same epochs."""
        if self.min_ceiling is not None:
            ceiling = self._ceiling or self.ceiling()
            if not ceiling["kendall_tau"] >= self.min_ceiling:
                first, second = ceiling["halves"]
                raise ConfigError(
                    f"the ground truth's ceiling is Kendall tau {ceiling['kendall_tau']:.3f} (seeds {first} vs "
                    f"{second}, n={ceiling['n']}), below study.min_ceiling={self.min_ceiling}: the "
                    "ground truth is too noisy to tell the supernets apart. Add seeds (study.seeds=[...]) or change "
                    "the design (docs/ranking-study.md), or set study.min_ceiling=null to train the supernets anyway"
                )
        jobs = [
            Job(
                "train.py",
                self.supernet_dir(name),
                (*self.train_base(), *overrides, f"seed={self._supernet_seeds[name]}"),
                True,
            )
            for name, overrides in self.supernet_runs.items()
        ]
        return self.launch(jobs)

    def oneshot(self) -> dict[str, int]:
        """Each supernet evaluates the study's architectures and, for its histogram, a random sample (search.py)."""
        jobs = []
        for name in self.supernet_runs:
            base = (f"ckpt_path={self.supernet_checkpoint(name)}", "logger=none", *self.search_overrides)
            if self.allow_datasets:
                base += (f"allow_datasets=[{','.join(self.allow_datasets)}]",)
            own = [
                Job(
                    "search.py",
                    self.oneshot_dir(name, "sample"),
                    (*base, "strategy=list", f"strategy.path={self.archs_file}"),
                )
            ]
            if self.histogram_samples > 0:
                random = (
                    "strategy=random",
                    f"strategy.num_samples={self.histogram_samples}",
                    f"seed={self.sample_seed}",
                )
                own.append(
                    Job("search.py", self.oneshot_dir(name, "random"), (*base, *random, *self.histogram_overrides))
                )
            if not all(job.done for job in own):
                self._checkpoint(name)  # a clear error if the supernet is unfinished or its checkpoint gone
            jobs += own
        return self.launch(jobs)

    def report(self) -> dict[str, Any]:
        """Scores every supernet and the cost proxies against the ground truth; writes ``report/``.

        With a tuning split, the report is written again on the held-out architectures
        (``report/holdout/``, in ``results["holdout"]``).
        """
        self.source.check_report()
        from fairnas.study.report import write_report

        if self.tuning_fraction is not None:
            self.tuning_split()  # declared before any one-shot score is read
        truth = self.ground_truth_table()
        ceiling = self.ceiling(truth)  # the table just read, not a second pass over the run files
        archs = list(truth["arch"])
        oneshot = {name: self._oneshot_accuracies(name, "sample", archs) for name in self.supernet_runs}
        histograms = {
            name: list(self._oneshot_accuracies(name, "random").values())
            for name in self.supernet_runs
            if self.histogram_samples > 0
        }
        similarity = self._similarity() if self.similarity_batches > 0 else {}
        shared = {"choice_names": [str(c) for c in self.space.searchable_layers[0].choices], "top_k": self.top_k,
                  "n_boot": self.bootstrap, "seed": self.bootstrap_seed}  # fmt: skip
        results = write_report(
            self.dir / "report",
            truth=truth,
            ceiling=ceiling,
            oneshot=oneshot,
            histograms=histograms,
            similarity=similarity,
            design=self._design(),
            truth_source=self.source.describe(),
            **shared,
        )
        holdout = self.tuning_split()[1] if self.tuning_fraction else []
        if len(holdout) >= 2:
            sub = truth.subset(holdout)
            subset = f"{len(holdout)} of {len(archs)}"
            results["holdout"] = write_report(
                self.dir / "report" / "holdout",
                truth=sub,
                ceiling=self._seed_halves(sub),
                oneshot={name: {row["arch"]: accs[row["arch"]] for row in sub.rows} for name, accs in oneshot.items()},
                histograms={},
                similarity={},
                design={**self._design(), "subset": f"held-out {subset}"},
                truth_source=f"held out of the tuning split ({subset}), {self.source.describe()}",
                **shared,
            )
        self.source.write_report_extras(self.dir / "report", truth, oneshot)
        return results

    # ------------------------------------------------------------------ tables
    def ground_truth_table(self) -> GroundTruthTable:
        """The true accuracy of each architecture and seed, with its costs (see the source)."""
        return self.source.table(self)

    def tuning_split(self) -> tuple[list[str], list[str]]:
        """The declared (tuning, held-out) split of the study's architectures, seeded by ``sample_seed``.

        Written to ``tuning_split.json`` the first time and read back after, so it never moves.
        """
        if self.tuning_fraction is None:
            raise ConfigError("study.tuning_fraction is null: this study declares no tuning split")
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

    # ------------------------------------------------------------------ helpers
    def train_base(self) -> list[str]:
        """The overrides every training run of the study starts with: its space, then ``train_overrides``."""
        return [f"search_space={self.space_name}", *self.train_overrides]

    def launch(self, jobs: Sequence[Job]) -> dict[str, int]:
        """Runs the unfinished ``jobs`` as the study is set to (parallel, launcher), logging them in ``commands.sh``."""
        counts = run_jobs(jobs, commands_file=self.dir / "commands.sh", **self._run)
        log.info("%d runs: %d already finished, %d run now", len(jobs), counts["skipped"], counts["ran"])
        return counts

    def _seed_halves(self, table: GroundTruthTable) -> dict[str, Any]:
        """The ceiling every ground truth has: seed halves, their intervals, variance components, all halvings."""
        if len(self.seeds) < 2:
            raise ConfigError("the ceiling needs at least two seeds per architecture (seeds=[0,1])")
        half = len(self.seeds) // 2
        a = table[[f"seed{s}" for s in self.seeds[:half]]].mean(axis=1)
        b = table[[f"seed{s}" for s in self.seeds[half : 2 * half]]].mean(axis=1)
        accs = table[[f"seed{s}" for s in self.seeds]]
        result: dict[str, Any] = {
            "n": len(a),
            "halves": [self.seeds[:half], self.seeds[half : 2 * half]],
            "acc_range": [float(accs.mean(axis=1).min()), float(accs.mean(axis=1).max())],
            "acc_std_across_archs": float(accs.mean(axis=1).std(ddof=1)),
            # Std of one architecture's accuracy over seeds (pooled): the noise of a single run.
            "seed_std": float(np.sqrt(np.mean(accs.var(axis=1, ddof=1)))),
        }
        for key, fn in (("kendall_tau", kendall_tau), ("spearman_rho", spearman_rho), ("pearson_r", pearson_r)):
            estimate, low, high = bootstrap_ci(fn, a, b, n_boot=self.bootstrap, seed=self.bootstrap_seed)
            result.update({key: estimate, f"{key}_low": low, f"{key}_high": high})
        result.update(predicted_ceiling(accs))
        result["all_halvings"] = halving_taus(accs, seed=self.bootstrap_seed)
        return result

    def _checkpoint(self, name: str) -> Path:
        run = self.supernet_dir(name)
        if not (run / "results.json").is_file():
            raise ConfigError(f"supernet {name!r} is not trained yet ({run}): run the supernets stage first")
        ckpt = self.supernet_checkpoint(name)
        if not ckpt.is_file():  # e.g. results copied from docs/, which keeps no checkpoints
            raise ConfigError(
                f"supernet {name!r} has finished ({run / 'results.json'}) but its checkpoint {ckpt} is missing: "
                f"to train it again, move {run} aside and rerun the supernets stage"
            )
        return ckpt

    def _oneshot_accuracies(self, name: str, kind: str, archs: Sequence[str] | None = None) -> dict[str, float]:
        path = self.oneshot_dir(name, kind) / "evaluated.csv"
        if not path.is_file():
            raise ConfigError(f"{path} is missing: run the oneshot stage first")
        with path.open() as f:
            # searched=False: a named model of the space the search added; not part of a random sample.
            accs = {row["arch"]: float(row["acc1"]) for row in csv.DictReader(f) if row.get("searched") != "False"}
        if archs is None:
            return accs
        missing = [a for a in archs if a not in accs]
        if missing:
            raise ConfigError(
                f"{path} lacks {len(missing)} of the study's architectures (e.g. {missing[0]}): rerun oneshot"
            )
        return {a: accs[a] for a in archs}

    def _similarity(self) -> dict[str, dict[int, np.ndarray]]:
        """Choice-block similarity of every searchable layer, per trained supernet and for an untrained one."""
        import torch

        from fairnas.analysis import block_similarity
        from fairnas.models import Supernet
        from fairnas.run import load_supernet

        nets: dict[str, Supernet] = {}
        for name in self.supernet_runs:
            nets[name], record = load_supernet(self._checkpoint(name))
        untrained = Supernet(self.space, record.num_classes, record.in_channels, seed=self.supernet_seed)
        nets = {"untrained": untrained, **nets}
        # By name from fairnas's registry (or allow_datasets), never by a _target_ read from the checkpoint.
        datamodule = record.data.build(self.allow_datasets)
        datamodule.setup("fit")
        batches = []
        for batch in datamodule.val_dataloader():
            batches.append(batch[0])
            if len(batches) == self.similarity_batches:
                break
        with torch.no_grad():
            return {
                name: {layer: block_similarity(net, layer, batches) for layer in range(self.space.num_layers)}
                for name, net in nets.items()
            }

    def _design(self) -> dict[str, Any]:
        design: dict[str, Any] = {
            "search_space": self.space_name,
            "train_overrides": self.train_overrides,
            "supernets": self.supernet_runs,
            "search_overrides": self.search_overrides,
            "histogram_samples": self.histogram_samples,
            "bootstrap": self.bootstrap,
        }
        if self._per_seed_supernets:
            design["supernet_seeds"] = sorted(set(self._supernet_seeds.values()))
        else:
            design["supernet_seed"] = self.supernet_seed
        if self.tuning_fraction is not None:
            design["tuning_fraction"] = self.tuning_fraction
        return {**design, **self.source.design(self)}
