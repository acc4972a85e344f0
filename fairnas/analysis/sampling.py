"""Choosing the architectures of a ranking study, and the files that hand them to a Hydra sweep.

A uniform sample of a large space clusters around the median cost (the MAdds of an architecture
are a sum of L independent layer costs), so a ranking measured on it says little about the small
and large models a search actually compares. :func:`stratified_sample` spreads the sample over the
whole MAdds range instead, always including the space's cheapest and most expensive architecture.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fairnas.errors import ConfigError
from fairnas.models.cost import CostModel
from fairnas.models.space import Arch, ArchitectureError, SearchSpace


def _madds_table(space: SearchSpace, cost_model: CostModel) -> np.ndarray:
    """The (L, m) MAdds table of the searchable layers."""
    return np.asarray(cost_model.madds_table, dtype=np.int64).reshape(space.num_layers, space.num_choices)


def extreme_archs(space: SearchSpace, cost_model: CostModel | None = None) -> tuple[Arch, Arch]:
    """The smallest- and largest-MAdds architectures: per-layer argmin/argmax of the cost table (first on ties)."""
    table = _madds_table(space, cost_model or CostModel.create(space))
    return tuple(int(c) for c in table.argmin(axis=1)), tuple(int(c) for c in table.argmax(axis=1))


def _pool(space: SearchSpace, size: int, rng: np.random.Generator, need: int) -> np.ndarray:
    """Distinct candidate architectures (rows), in random order: the whole space if it is small, else uniform draws."""
    m, num_layers = space.num_choices, space.num_layers
    if space.size <= size:
        archs = np.array(list(itertools.product(range(m), repeat=num_layers)), dtype=np.int64)
        return archs[rng.permutation(len(archs))]
    drawn = np.empty((0, num_layers), dtype=np.int64)
    while True:  # a space larger than the pool almost always gives enough distinct draws in one go
        drawn = np.concatenate([drawn, rng.integers(0, m, size=(size, num_layers))])
        _, first = np.unique(drawn, axis=0, return_index=True)
        if len(first) >= need:
            return drawn[np.sort(first)]  # first occurrences, in draw order (already random)


def _spread(count: int, wanted: int) -> np.ndarray:
    """``wanted`` evenly spaced positions among ``count`` (a partial round still spans low to high cost)."""
    return np.unique(np.round(np.linspace(0, count - 1, wanted)).astype(np.int64))


def stratified_sample(
    space: SearchSpace,
    n: int,
    seed: int,
    num_bins: int | None = None,
    cost_model: CostModel | None = None,
    pool: int = 20000,
) -> list[Arch]:
    """A seeded sample of ``n`` distinct architectures spread over the space's MAdds range.

    Draws a pool of ``max(pool, 4 n)`` architectures uniformly (or takes the whole space if it is
    no larger), bins it by MAdds into ``num_bins`` equal-width bins over the space's MAdds range,
    and takes architectures round-robin from the non-empty bins, cheapest bin first; a round
    that cannot visit every bin visits evenly spaced ones. The space's cheapest and most
    expensive architectures (see :func:`extreme_archs`) are always part of the sample (``n >= 2``),
    so the sample's cost range is the space's.

    Args:
        space: The search space.
        n: Number of architectures.
        seed: Seed of the generator; the same seed gives the same sample.
        num_bins: Number of MAdds bins (default ``n``; fewer bins sample each cost level more densely).
        cost_model: Cost tables to use (default: the space's nominal input size and classes).
        pool: Size of the uniform pool drawn from a large space.

    Returns:
        The architectures, sorted by MAdds (then by choice indices).

    Raises:
        ConfigError: ``n`` is not in 1..(number of architectures), or ``num_bins``/``pool`` is not positive.
    """
    n = int(n)
    if not 1 <= n <= space.size:
        raise ConfigError(f"n: cannot sample {n} distinct architectures from space {space.name!r} of {space.size}")
    bins = n if num_bins is None else int(num_bins)
    if bins < 1 or int(pool) < 1:
        raise ConfigError(f"num_bins and pool must be positive, got num_bins={num_bins}, pool={pool}")
    cost_model = cost_model or CostModel.create(space)
    rng = np.random.default_rng(seed)
    table = _madds_table(space, cost_model)

    def madds(archs: np.ndarray) -> np.ndarray:
        return cost_model.fixed_madds + table[np.arange(space.num_layers), archs].sum(axis=1)

    chosen: list[Arch] = list(dict.fromkeys(extreme_archs(space, cost_model)))[:n]
    candidates = _pool(space, max(int(pool), 4 * n), rng, n + len(chosen))
    taken = {tuple(a) for a in chosen}
    candidates = candidates[[tuple(int(c) for c in row) not in taken for row in candidates]]
    low, high = cost_model.range_madds()
    width = (high - low) / bins
    bin_of = (
        np.minimum(((madds(candidates) - low) / width).astype(np.int64), bins - 1)
        if width > 0
        else np.zeros(len(candidates), dtype=np.int64)
    )
    queues = [list(np.flatnonzero(bin_of == b)) for b in range(bins)]
    while len(chosen) < n:
        available = [q for q in queues if q]
        if not available:  # unreachable: the pool holds at least n distinct candidates besides the extremes
            raise RuntimeError(f"the candidate pool ran out after {len(chosen)} of {n} architectures")
        wanted = n - len(chosen)
        visit = available if wanted >= len(available) else [available[i] for i in _spread(len(available), wanted)]
        for queue in visit:
            chosen.append(tuple(int(c) for c in candidates[queue.pop(0)]))
    costs = madds(np.array(chosen, dtype=np.int64))
    return [chosen[i] for i in sorted(range(len(chosen)), key=lambda i: (int(costs[i]), chosen[i]))]


def one_per_cost_bin(items: Iterable[Any], cost: Callable[[Any], float], n: int | None, seed: int) -> list[Any]:
    """``n`` of ``items`` spread over their cost: sorted by (cost, item), cut into ``n`` bins of equal count,
    one drawn from each (``seed``); all of them if ``n`` is None or at least their number. In cost order."""
    ranked = sorted(items, key=lambda item: (cost(item), item))
    if n is None or n >= len(ranked):
        return ranked
    rng = np.random.default_rng(seed)
    return [ranked[int(rng.choice(part))] for part in np.array_split(np.arange(len(ranked)), n)]


def write_archs(archs: Iterable[Arch], path: str | Path, space: SearchSpace) -> Path:
    """Writes one '-'-joined architecture per line, e.g. for ``arch=$(paste -sd, FILE)`` in a ``-m`` sweep.

    Each architecture is validated against ``space`` first, so a bad one fails here and not
    halfway through a sweep. Creates parent folders; returns the path.
    """
    lines = [space.format_arch(space.parse_arch(arch)) for arch in archs]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def read_archs(path: str | Path, space: SearchSpace) -> list[Arch]:
    """Reads a file of :func:`write_archs`; blank lines and ``#`` comments are skipped.

    Raises:
        ArchitectureError: A line is not an architecture of ``space`` (the message names the line).
    """
    path = Path(path)
    archs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            archs.append(space.parse_arch(text))
        except ArchitectureError as error:
            raise ArchitectureError(f"{path}:{number}: {error}") from None
    return archs
