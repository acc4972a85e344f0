"""NAS-Bench-Macro: the published CIFAR-10 accuracies of every network of its 8-layer space.

Su et al., "Prioritized Architecture Sampling with Monte-Carlo Tree Search", CVPR 2021;
github.com/xiusu/NAS-Bench-Macro (Apache-2.0, copyright 2021 Xiu Su). The benchmark file ships
in ``fairnas/nas_bench/data/`` (gzip-compressed, otherwise unchanged; see the LICENSE and README
there), so nothing is downloaded.

A key is 8 digits, one choice per searchable layer of ``conf/search_space/nas_bench_macro.yaml``
in the same order (``"02012100"`` is ``arch=0-2-0-1-2-1-0-0``). Each network was trained from
scratch 3 times (50 epochs); an entry holds the 3 test accuracies (percent), their mean and
standard deviation, and the network's params and FLOPs (multiply-adds of convs and the linear
layer), which the project's cost model reproduces exactly.

The 6561 keys name 3969 distinct networks: inside a stage, an identity choice after the stage's
first layer (stride 1, same shape) only removes a block, so where it sits does not matter. The
benchmark trained one network per :func:`canonical_key` (the identities moved to the end of
their stage) and gives every key its canonical key's entry.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

MACRO_FILE = Path(__file__).resolve().parent / "data" / "nas-bench-macro_cifar10.json.gz"
MACRO_STAGES = (2, 3, 3)
"""Searchable layers per stage; the first layer of each has stride 2."""
NUM_CHOICES = 3


@dataclass(frozen=True)
class MacroEntry:
    """One network of NAS-Bench-Macro."""

    key: str
    test_acc: tuple[float, ...]
    """Test accuracy (percent) of each of the 3 training runs."""
    mean_acc: float
    std: float
    params: int
    flops: int


def _check_key(key: str, stages: Sequence[int] = MACRO_STAGES) -> str:
    key = str(key)
    if len(key) != sum(stages) or any(c not in "012"[:NUM_CHOICES] for c in key):
        raise ValueError(f"NAS-Bench-Macro key {key!r}: expected {sum(stages)} digits in 0..{NUM_CHOICES - 1}")
    return key


def key_to_arch(key: str) -> tuple[int, ...]:
    """The architecture (choice indices) of a benchmark key: ``"02012100"`` -> ``(0, 2, 0, 1, 2, 1, 0, 0)``."""
    return tuple(int(c) for c in _check_key(key))


def arch_to_key(arch: Sequence[int]) -> str:
    """The benchmark key of an architecture: ``(0, 2, 0, 1, 2, 1, 0, 0)`` -> ``"02012100"``."""
    return _check_key("".join(str(int(c)) for c in arch))


def canonical_key(key: str | Sequence[int], stages: Sequence[int] = MACRO_STAGES) -> str:
    """The key of the distinct network that ``key`` names, as the benchmark normalises it.

    In every stage the first layer is kept; in the following (stride-1) layers the identity
    choices (0) move to the end of the stage and the other choices keep their order. E.g.
    ``"10200201"`` -> ``"10200210"``. Accepts a key or an architecture (sequence of indices).
    """
    key = arch_to_key(key) if not isinstance(key, str) else _check_key(key, stages)
    out, start = [], 0
    for n in stages:
        stage = key[start : start + n]
        rest = [c for c in stage[1:] if c != "0"]
        out.append(stage[0] + "".join(rest) + "0" * (n - 1 - len(rest)))
        start += n
    return "".join(out)


def distinct_keys(keys: Iterable[str]) -> list[str]:
    """The sorted canonical keys of ``keys``: one per distinct network."""
    return sorted({canonical_key(k) for k in keys})


def load_macro(path: str | Path | None = None) -> dict[str, MacroEntry]:
    """Every entry of the benchmark file, by key.

    Args:
        path: A NAS-Bench-Macro JSON file, plain or gzip-compressed (``.gz``); default: the copy
            shipped with the project.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a NAS-Bench-Macro file.
    """
    path = Path(path) if path is not None else MACRO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"NAS-Bench-Macro file {str(path)!r} does not exist: give the path of the JSON file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        raw = json.load(f)
    entries = {}
    try:
        for key, value in raw.items():
            entries[_check_key(key)] = MacroEntry(
                key=key,
                test_acc=tuple(float(a) for a in value["test_acc"]),
                mean_acc=float(value["mean_acc"]),
                std=float(value["std"]),
                params=int(value["params"]),
                flops=int(value["flops"]),
            )
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{str(path)!r} is not a NAS-Bench-Macro file ({error!r})") from None
    return entries
