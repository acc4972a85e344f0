"""What a search strategy searches: the space's shape, the limits, a cheap exact cost model and an
expensive accuracy oracle; and the sampling of feasible architectures every strategy starts from.

Torch-free, like the strategies: sampling under limits uses bounded retries, so a limit no
architecture meets raises :class:`ConfigError` after :data:`MAX_DRAWS_PER_SAMPLE` draws instead of
looping forever.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fairnas.arch import Arch
from fairnas.errors import ConfigError

log = logging.getLogger(__name__)

Limits = Mapping[str, float]
"""Upper bounds on costs, by cost name (``{"madds": 3e8}``); a cost must be <= its bound."""

MAX_DRAWS_PER_SAMPLE = 1000
"""Consecutive draws (random samples or evolution children) that may fail before giving up."""

ENUMERATE_LIMIT = 20_000
"""Spaces up to this size are walked exhaustively once random draws stop finding new architectures."""

LIMIT_COSTS = {"max_madds": "madds", "max_params": "params", "max_latency_ms": "latency_ms"}
"""Strategy setting -> the ``problem.costs`` key it bounds."""


@dataclass
class SearchProblem:
    """What a strategy searches: the space, a cheap exact cost model and an expensive accuracy oracle.

    Args:
        num_layers: Number of searchable layers L; an architecture has one choice index per layer.
        num_choices: Number of choices m per layer; choice indices are in [0, m).
        costs: Cost model of one architecture, e.g. ``{"madds": ..., "params": ...}`` and maybe
            ``"latency_ms"``; cheap and exact, so strategies may call it freely.
        accuracy: Accuracy of a batch of architectures (supernet evaluation), one float per
            architecture, higher is better. Expensive: strategies ask each architecture once.
        progress: Called with the number of NEW architectures just evaluated (for a progress bar).
    """

    num_layers: int
    num_choices: int
    costs: Callable[[Arch], dict[str, float]]
    accuracy: Callable[[Sequence[Arch]], list[float]]
    progress: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.num_choices < 1:
            raise ConfigError(
                f"a search space needs at least one layer and one choice, got L={self.num_layers}, m={self.num_choices}"
            )

    @property
    def size(self) -> int:
        """Number of architectures in the space, m**L."""
        return self.num_choices**self.num_layers


def limits_from(
    max_madds: float | None = None, max_params: float | None = None, max_latency_ms: float | None = None
) -> dict[str, float]:
    """The limits that are set, keyed by cost name; validates them.

    Raises:
        ConfigError: A limit is not a finite number.
    """
    limits: dict[str, float] = {}
    for setting, value in (("max_madds", max_madds), ("max_params", max_params), ("max_latency_ms", max_latency_ms)):
        if value is None:
            continue
        try:
            bound = float(value)
        except (TypeError, ValueError):
            bound = math.nan
        if not math.isfinite(bound):
            raise ConfigError(f"strategy.{setting} must be a finite number or null (no limit), got {value!r}")
        limits[LIMIT_COSTS[setting]] = bound
    return limits


def cost_values(costs: Mapping[str, float], keys: Collection[str], what: str) -> list[float]:
    """The values of ``keys`` in ``costs``; a missing key is a setting the cost model cannot honour."""
    missing = [k for k in keys if k not in costs]
    if missing:
        raise ConfigError(
            f"{what} names the cost(s) {missing}, but the cost model only gives {sorted(costs)}; "
            "drop them or provide those costs (e.g. a latency table for latency_ms)"
        )
    return [float(costs[k]) for k in keys]


def is_feasible(costs: Mapping[str, float], limits: Limits) -> bool:
    """Whether every limited cost is within its bound.

    Raises:
        ConfigError: A limit bounds a cost the cost model does not give (e.g. ``max_latency_ms``
            without a latency model).
    """
    settings = {cost: setting for setting, cost in LIMIT_COSTS.items()}
    for key, bound in limits.items():
        if key not in costs:
            raise ConfigError(
                f"strategy.{settings.get(key, key)} is set, but the cost model gives no {key!r} "
                f"(only {sorted(costs)}); set it to null or provide that cost (e.g. a latency table for latency_ms)"
            )
        if float(costs[key]) > bound:
            return False
    return True


def limits_text(limits: Limits) -> str:
    names = {cost: setting for setting, cost in LIMIT_COSTS.items()}
    return ", ".join(f"{names.get(k, k)}={v:g}" for k, v in limits.items())


def sample_feasible(
    rng: np.random.Generator,
    problem: SearchProblem,
    limits: Limits,
    n: int,
    exclude: Collection[Arch] = (),
) -> list[Arch]:
    """Up to ``n`` distinct uniform random architectures within the limits and not in ``exclude``.

    Random draws stop after :data:`MAX_DRAWS_PER_SAMPLE` consecutive draws that bring nothing new,
    so the call is bounded even when the limits admit few (or no) architectures. A space of at most
    :data:`ENUMERATE_LIMIT` architectures is then walked in random order, so the answer there is exact
    (every feasible architecture is found) rather than a matter of luck in the last draws.

    Args:
        rng: The strategy's generator (the only source of randomness).
        problem: The space and its cost model.
        limits: Upper bounds by cost name.
        n: Number of architectures wanted.
        exclude: Architectures not to return (e.g. already evaluated).

    Returns:
        The architectures in draw order; fewer than ``n`` only when the feasible part of the space
        outside ``exclude`` is (or, in a large space, looks) exhausted; then a warning is logged.

    Raises:
        ConfigError: Nothing is excluded and no architecture tried met the limits: they look
            unsatisfiable. The message gives the smallest costs seen so the user can pick limits.
    """
    found: list[Arch] = []
    seen = set(exclude)
    smallest: dict[str, float] = {}
    tried = 0

    def consider(arch: Arch) -> bool:
        """Try a not-yet-seen architecture; True if it is feasible (and then kept)."""
        nonlocal tried
        seen.add(arch)
        tried += 1
        costs = problem.costs(arch)
        for key in ("madds", "params", "latency_ms", *limits):
            if key in costs:
                smallest[key] = min(smallest.get(key, math.inf), float(costs[key]))
        if is_feasible(costs, limits):
            found.append(arch)
            return True
        return False

    failures = 0
    while len(found) < n and failures < MAX_DRAWS_PER_SAMPLE:
        arch = tuple(int(c) for c in rng.integers(0, problem.num_choices, size=problem.num_layers))
        failures = 0 if arch not in seen and consider(arch) else failures + 1
    enumerated = len(found) < n and problem.size <= ENUMERATE_LIMIT
    if enumerated:
        shape = (problem.num_choices,) * problem.num_layers
        for index in rng.permutation(problem.size):
            arch = tuple(int(c) for c in np.unravel_index(index, shape))
            if arch not in seen:
                consider(arch)
                if len(found) == n:
                    break
    if not found and n > 0 and not exclude:
        low = ", ".join(f"{k}={v:g}" for k, v in smallest.items())
        where = f"the whole space ({problem.size} architectures)" if enumerated else f"{tried} random architectures"
        raise ConfigError(
            f"no architecture in {where} meets the limits ({limits_text(limits)}): they look unsatisfiable. "
            f"The smallest costs seen were {low} (each minimised on its own); raise the limits or set them to null"
        )
    if len(found) < n:
        log.warning(
            "found only %d of %d wanted distinct feasible architectures (%d layers x %d choices, limits: %s)",
            len(found),
            n,
            problem.num_layers,
            problem.num_choices,
            limits_text(limits) or "none",
        )
    return found
