"""The ground truth of a ranking study: where the true accuracies come from, and the table they fill.

A :class:`fairnas.study.RankingStudy` runs the same stages whatever its ground truth is; what
differs lives in a :class:`GroundTruthSource`, which owns

- which architectures are scored (the ``sample`` stage's draw, and what it accepts from an
  existing ``archs.txt``),
- the true accuracy of each architecture per seed (the ``ground_truth`` stage, then
  :meth:`GroundTruthSource.table`),
- what the ceiling adds to the seed halves every ground truth has,
- what the design and the report say about the source.

Two sources: :class:`TrainedGroundTruth` trains every architecture stand-alone with each seed;
:class:`fairnas.study.benchmark.BenchmarkGroundTruth` reads NAS-Bench-Macro's training runs.

Every random draw of a source is made by a generator of its own seeded with its ``sample_seed``
(a new one per draw, so a resumed study draws the same again), never by a global random state.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fairnas.analysis import stratified_sample
from fairnas.errors import ConfigError
from fairnas.models.space import Arch, SearchSpace
from fairnas.study.runner import Job

if TYPE_CHECKING:
    from fairnas.study.ranking_study import RankingStudy

log = logging.getLogger("fairnas")

__all__ = ["GroundTruthSource", "GroundTruthTable", "TrainedGroundTruth"]


class GroundTruthTable:
    """Rows of the ground truth (arch, madds, params, one accuracy column per seed) with column access.

    Not :class:`fairnas.ranking.GroundTruth`: that one is a whole table's mean accuracy by
    architecture, checked against a training run's space and data for the ranking monitor; this
    one is a study's sample with the accuracy of each seed and the costs its report needs.
    """

    def __init__(self, rows: list[dict[str, Any]], seed_columns: list[str]) -> None:
        self.rows = rows
        self.seed_columns = seed_columns

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, columns: str | list[str]) -> np.ndarray:
        if isinstance(columns, str):
            return np.array([row[columns] for row in self.rows])
        return np.array([[row[c] for c in columns] for row in self.rows], dtype=np.float64)

    @property
    def mean(self) -> np.ndarray:
        """Mean accuracy over seeds: the ground truth the supernets are scored against."""
        return self[self.seed_columns].mean(axis=1)

    def subset(self, archs: Sequence[str]) -> GroundTruthTable:
        """The rows of ``archs`` only, in the table's order."""
        keep = set(archs)
        return GroundTruthTable([row for row in self.rows if row["arch"] in keep], self.seed_columns)


class GroundTruthSource(ABC):
    """Where a ranking study's true accuracies come from (see the module docstring).

    The study hands itself to every method: its directory layout (``archs_file``,
    ``standalone_dir``, ...), its space, its training overrides and its job runner.

    Attributes:
        kind: A word for studies of this source in messages (``stand-alone``, ``benchmark``).
        seeds: The runs of each architecture, as the table's columns ``seed<k>``.
        sample_seed: Seed of the source's draws; the study seeds its own (the histogram's random
            sample, the tuning split) with it too, so one number fixes every draw of a design.
    """

    kind: str
    seeds: list[int]
    sample_seed: int

    def check_space(self, space: SearchSpace) -> None:  # noqa: B027 - optional hook: any space by default
        """Raises a :class:`ConfigError` if the source cannot score architectures of ``space``."""

    @abstractmethod
    def draw(self, space: SearchSpace) -> list[Arch]:
        """The architectures to score, drawn the first time (the study writes them to ``archs.txt``)."""

    def check_sample(self, archs: Sequence[Arch], path: Path) -> None:  # noqa: B027 - optional hook
        """Raises a :class:`ConfigError` if ``archs``, read from an existing ``path``, cannot be scored."""

    @abstractmethod
    def collect(self, study: RankingStudy) -> dict[str, int]:
        """The ``ground_truth`` stage: trains or reads the true accuracies; returns job counts."""

    @abstractmethod
    def table(self, study: RankingStudy) -> GroundTruthTable:
        """The accuracy (a fraction) of each architecture and seed, with its ``madds`` and ``params``.

        Raises:
            ConfigError: The ground truth is not there yet (the ``ground_truth`` stage has not run).
        """

    def ceiling_extras(self, table: GroundTruthTable, n_boot: int, seed: int) -> dict[str, Any]:
        """Entries the source adds to ``ceiling.json`` beyond the seed halves (none by default)."""
        return {}

    def check_report(self) -> None:  # noqa: B027 - optional hook: every source reports by default
        """Raises a :class:`ConfigError` if the ground truth is not one the report may be written from."""

    @abstractmethod
    def describe(self) -> str:
        """Where the accuracies come from, for the report (``Ground truth: N architectures <this>``)."""

    @abstractmethod
    def design(self, study: RankingStudy) -> dict[str, Any]:
        """The source's entries of the report's design record."""

    def write_report_extras(  # noqa: B027 - optional hook: nothing more by default
        self, out_dir: Path, truth: GroundTruthTable, oneshot: Mapping[str, Mapping[str, float]]
    ) -> None:
        """Writes what the source adds to ``report/`` (``oneshot``: each supernet's accuracy per architecture)."""


class TrainedGroundTruth(GroundTruthSource):
    """The ground truth trained here: every sampled architecture stand-alone with each seed.

    Runs go to ``ground_truth/<arch>/seed<k>/`` of the study (ordinary ``train.py`` runs with the
    study's training overrides, then ``standalone_overrides``, ``arch=`` and ``seed=``).

    Args:
        sample_size: Number of architectures (a seeded, MAdds-stratified sample of the space).
        sample_seed: Seed of the sample and of the order the architectures are trained in.
        num_bins: MAdds bins of the stratified sample (default: ``sample_size``).
        seeds: Stand-alone seeds per architecture (initialisation and data order; the validation
            split is fixed by ``split_seed`` in the study's training overrides).
        standalone_overrides: Extra overrides of the stand-alone runs only.
        probe: Train and score only the first ``probe`` architectures of the seeded order (a
            spread subset): a cheap ceiling measurement for choosing the design (epochs, seeds)
            before the whole ground truth is paid for. The report needs ``None``.
    """

    kind = "stand-alone"

    def __init__(
        self,
        sample_size: int = 40,
        sample_seed: int = 0,
        num_bins: int | None = None,
        seeds: Sequence[int] = (0, 1),
        standalone_overrides: Sequence[str] = (),
        probe: int | None = None,
    ) -> None:
        if len(seeds) < 1 or len(set(seeds)) != len(seeds):
            raise ConfigError(f"seeds: need one or more distinct seeds, got {list(seeds)}")
        if probe is not None and int(probe) < 2:
            raise ConfigError(f"probe: a ceiling needs at least 2 architectures, got {probe}")
        self.sample_size, self.sample_seed, self.num_bins = int(sample_size), int(sample_seed), num_bins
        self.seeds = [int(s) for s in seeds]
        self.standalone_overrides = [str(o) for o in standalone_overrides]
        self.probe = None if probe is None else int(probe)

    def draw(self, space: SearchSpace) -> list[Arch]:
        """A MAdds-stratified sample of ``sample_size`` architectures (:func:`fairnas.analysis.stratified_sample`)."""
        return stratified_sample(space, self.sample_size, self.sample_seed, self.num_bins)

    def order(self, study: RankingStudy) -> list[str]:
        """The study's architectures in the seeded order they are trained in; the first ``probe`` with a probe.

        Both seeds of one architecture run one after the other, so the finished part of an
        interrupted stage is a spread sample whose ceiling can already be read.
        """
        archs = study.sample()
        order = [archs[i] for i in np.random.default_rng(self.sample_seed).permutation(len(archs))]
        return order if self.probe is None else order[: self.probe]

    def collect(self, study: RankingStudy) -> dict[str, int]:
        """Trains every architecture stand-alone with every seed (the slow part; run it first)."""
        jobs = [
            Job(
                "train.py",
                study.standalone_dir(arch, seed),
                (*study.train_base(), *self.standalone_overrides, f"arch={arch}", f"seed={seed}"),
                resumable=True,
            )
            for arch in self.order(study)
            for seed in self.seeds
        ]
        return study.launch(jobs)

    def table(self, study: RankingStudy) -> GroundTruthTable:
        """Stand-alone validation accuracy of each architecture and seed, with its costs (from ``results.json``)."""
        chosen = set(self.order(study))
        archs = [a for a in study.sample() if a in chosen]
        done = {(a, s): study.standalone_dir(a, s) / "results.json" for a in archs for s in self.seeds}
        missing = [str(path.parent) for path in done.values() if not path.is_file()]
        if missing:
            raise ConfigError(
                f"{len(missing)} stand-alone runs are not finished (e.g. {missing[0]}): "
                "run the ground_truth stage first"
            )
        rows = []
        for arch in archs:
            results = [json.loads(done[arch, s].read_text()) for s in self.seeds]
            row = {"arch": arch, "madds": results[0]["madds"], "params": results[0]["params"]}
            row.update({f"seed{s}": float(r["val/acc"]) for s, r in zip(self.seeds, results)})
            rows.append(row)
        return GroundTruthTable(rows, [f"seed{s}" for s in self.seeds])

    def check_report(self) -> None:
        if self.probe is not None:
            raise ConfigError("study.probe is set: the report needs the whole ground truth (study.probe=null)")

    def describe(self) -> str:
        return f"trained stand-alone with seeds {', '.join(map(str, self.seeds))}"

    def design(self, study: RankingStudy) -> dict[str, Any]:
        return {
            "architectures": self.sample_size,
            "sample_seed": self.sample_seed,
            "standalone_seeds": self.seeds,
            "standalone_overrides": self.standalone_overrides,
        }
