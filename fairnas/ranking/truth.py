"""Ground truths a supernet's ranking is measured against: the stand-alone accuracy of architectures.

Three sources, one type (:class:`GroundTruth`):

- ``nas_bench_macro``: NAS-Bench-Macro's mean CIFAR-10 test accuracy (3 runs of 50 epochs) of each
  of its 3,969 distinct networks, keyed by canonical key (:mod:`fairnas.nas_bench.macro`); an
  architecture of the space is looked up through its canonical key.
- ``fairnas_mini``: the 40 architectures of the project's Fashion-MNIST ranking study
  (``docs/ranking-study.md``), each trained stand-alone from scratch with 12 seeds (6 epochs,
  ``dataset.val_size=10000``); the accuracy is the mean over seeds. Shipped in ``data/``.
- a CSV of the user's: an ``arch`` column (anything ``search_space.parse_arch`` reads: ``4-0-4-1-...``
  or block names) and an accuracy column, for any space.

A ground truth names the space it was measured in and the datasets it holds for; :meth:`GroundTruth.check`
refuses, with one message, a run whose space or data it does not fit.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fairnas.arch import Arch
from fairnas.errors import ConfigError
from fairnas.models.space import ArchitectureError, SearchSpace
from fairnas.nas_bench.macro import MACRO_STAGES, canonical_key, key_to_arch, load_macro

DATA = Path(__file__).resolve().parent / "data"
FAIRNAS_MINI_FILE = DATA / "fairnas_mini_fashion_mnist.csv"
BUILT_IN = ("fairnas_mini", "nas_bench_macro")


@dataclass(frozen=True)
class GroundTruth:
    """The true accuracy of each architecture of a table, and what the table holds for.

    Attributes:
        name: ``fairnas_mini``, ``nas_bench_macro`` or the CSV's path.
        accuracy: Accuracy (a fraction) of each architecture the table holds, by choice indices.
        space: The search space the table was measured in; None: any space whose architectures
            the table's rows are (a CSV checks its rows against the run's space instead).
        datasets: The datasets (``conf/dataset`` names) the accuracies hold for; None: not stated.
        lookup: Maps an architecture of the space to the table's entry for it (NAS-Bench-Macro's
            canonical key: identities inside a stage may sit anywhere); None: itself.
    """

    name: str
    accuracy: dict[Arch, float]
    space: str | None
    datasets: tuple[str, ...] | None
    lookup: Callable[[Sequence[int]], Arch] | None = None
    shape: tuple[int, int, int] | None = None  # (classes, image size, channels) of the data; None: not stated

    def check(
        self, space: SearchSpace, dataset: str | None, check_dataset: bool = True,
        shape: tuple[int, int, int] | None = None,
    ) -> None:  # fmt: skip
        """Raises one :class:`ConfigError` if the table does not fit the run's space or data (``shape``: the
        data's classes, image size and channels; a folder dataset's name alone does not say what it holds)."""
        if self.space is not None and space.name != self.space:
            raise ConfigError(
                f"ground truth {self.name!r} holds architectures of the space {self.space!r}, but this run trains "
                f"{space.name!r}: give a ground truth of that space (a CSV: callbacks.ranking.ground_truth=<file>) or "
                f"train search_space={self.space}"
            )
        bad = [a for a in self.accuracy if len(a) != space.num_layers or any(not 0 <= c < space.num_choices for c in a)]
        if bad:
            raise ConfigError(
                f"ground truth {self.name!r} holds {len(bad)} architectures that are not in the space {space.name!r} "
                f"({space.num_layers} layers x {space.num_choices} choices), e.g. {'-'.join(map(str, bad[0]))}: "
                "give a ground truth of this space"
            )
        if check_dataset and self.datasets is not None and dataset not in self.datasets:
            raise ConfigError(
                f"ground truth {self.name!r} holds for {' or '.join(self.datasets)}, but this run trains on "
                f"{dataset!r}: train on that data, give a ground truth of yours, or, if the data is the same under "
                "another name (your own copy in a folder), set callbacks.ranking.check_dataset=false"
            )
        if check_dataset and self.shape is not None and shape is not None and tuple(shape) != self.shape:
            raise ConfigError(
                f"ground truth {self.name!r} holds for {' or '.join(self.datasets or ())} ({self.shape[0]} classes, "
                f"{self.shape[1]}x{self.shape[1]} images, {self.shape[2]} channels), but this run's data has "
                f"{shape[0]} classes, {shape[1]}x{shape[1]} images and {shape[2]} channels: train on that data"
            )

    def __call__(self, arch: Sequence[int]) -> float:
        """The true accuracy of ``arch`` (through :attr:`lookup`)."""
        key = self.lookup(arch) if self.lookup is not None else tuple(int(c) for c in arch)
        return self.accuracy[key]


def nas_bench_macro(path: str | Path | None = None) -> GroundTruth:
    """NAS-Bench-Macro's mean test accuracy (as a fraction) of each of its distinct networks."""
    bench = load_macro(path)
    accuracy = {key_to_arch(k): e.mean_acc / 100.0 for k, e in bench.items() if canonical_key(k) == k}

    def lookup(arch: Sequence[int]) -> Arch:
        return key_to_arch(canonical_key(tuple(int(c) for c in arch), MACRO_STAGES))

    return GroundTruth(
        "nas_bench_macro", accuracy, "nas_bench_macro", ("cifar10", "cifar10_folder"), lookup, shape=(10, 32, 3)
    )


def fairnas_mini() -> GroundTruth:
    """The 40 architectures of the Fashion-MNIST ranking study, mean stand-alone accuracy over 12 seeds."""
    rows = _read_csv(FAIRNAS_MINI_FILE)
    accuracy = {tuple(int(c) for c in r["arch"].split("-")): float(r["accuracy"]) for r in rows}
    return GroundTruth("fairnas_mini", accuracy, "fairnas_mini", ("fashion_mnist",), shape=(10, 28, 1))


def from_csv(path: str | Path, space: SearchSpace, column: str = "accuracy", dataset: str | None = None) -> GroundTruth:
    """A user's table: ``arch`` and ``column`` (accuracy: a fraction or a percentage, higher is better)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"ground truth {str(path)!r} does not exist: give a CSV file with the columns arch,{column} (or one of "
            f"the built-in tables: {', '.join(BUILT_IN)})"
        )
    rows = _read_csv(path)
    if not rows or "arch" not in rows[0] or column not in rows[0]:
        found = ", ".join(rows[0]) if rows else "no rows"
        raise ConfigError(
            f"ground truth {str(path)!r} needs the columns arch and {column} ({found} found): "
            f"one row per architecture; callbacks.ranking.truth_column names the accuracy column"
        )
    accuracy: dict[Arch, float] = {}
    for line, row in enumerate(rows, start=2):
        try:
            arch = tuple(int(c) for c in space.parse_arch(row["arch"]))
        except (ArchitectureError, ValueError) as error:
            raise ConfigError(
                f"ground truth {str(path)!r} line {line}: {row['arch']!r} is not an architecture of the space "
                f"{space.name!r} ({error}): give a ground truth of this space"
            ) from None
        try:
            value = float(row[column])
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            raise ConfigError(f"ground truth {str(path)!r} line {line}: {column}={row[column]!r} is not a number")
        if arch in accuracy and accuracy[arch] != value:
            raise ConfigError(
                f"ground truth {str(path)!r} line {line}: {row['arch']} is listed twice with different accuracies "
                f"({accuracy[arch]} and {value}): give one value per architecture (e.g. the mean over seeds)"
            )
        accuracy[arch] = value
    return GroundTruth(str(path), accuracy, None, (dataset,) if dataset else None)


def load_ground_truth(
    spec: str, space: SearchSpace, column: str = "accuracy", dataset: str | None = None
) -> GroundTruth:
    """The ground truth ``spec`` names: ``auto`` (the built-in table of ``space``), a built-in name, or a CSV path."""
    if spec == "auto":
        if space.name not in BUILT_IN:
            raise ConfigError(
                f"callbacks.ranking.ground_truth=auto: there is no built-in ground truth for the space {space.name!r} "
                f"(built in: {', '.join(BUILT_IN)}): give a CSV of architectures and accuracies as "
                "callbacks.ranking.ground_truth=<file>"
            )
        spec = space.name
    if spec == "nas_bench_macro":
        return nas_bench_macro()
    if spec == "fairnas_mini":
        return fairnas_mini()
    return from_csv(spec, space, column, dataset)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
        return list(csv.DictReader(f))
