"""Search strategies: which architectures to evaluate with the trained supernet, torch-free.

A strategy only sees a :class:`SearchProblem`: the shape of the space (L layers, m choices), an exact
and cheap cost model, and an expensive accuracy oracle (supernet evaluation). It never imports torch,
so it is tested on toy problems whose optimum and Pareto front are known by enumeration.

Every strategy:

* owns ALL its randomness through ``np.random.default_rng(seed)``, created afresh in ``search``, so
  the same seed gives the same evaluated list and ``search`` may be called twice;
* checks the limits (``max_madds``, ``max_params``, ``max_latency_ms``) with ``problem.costs``
  BEFORE asking for accuracy: an architecture over a limit is never evaluated;
* asks ``problem.accuracy`` for each architecture at most once and in batches, so the caller can
  batch the supernet evaluation and show progress;
* returns the architectures it evaluated, in evaluation order, without duplicates.

Sampling under limits uses bounded retries: a limit no architecture meets raises :class:`ConfigError`
after :data:`MAX_DRAWS_PER_SAMPLE` draws instead of looping forever.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.duplicate import DefaultDuplicateElimination
from pymoo.core.problem import Problem
from pymoo.operators.crossover.ux import UniformCrossover
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.optimize import minimize

from fairnas.errors import ConfigError

log = logging.getLogger(__name__)

Arch = tuple[int, ...]
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


def _cost_values(costs: Mapping[str, float], keys: Collection[str], what: str) -> list[float]:
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


def _limits_text(limits: Limits) -> str:
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
            f"no architecture in {where} meets the limits ({_limits_text(limits)}): they look unsatisfiable. "
            f"The smallest costs seen were {low} (each minimised on its own); raise the limits or set them to null"
        )
    if len(found) < n:
        log.warning(
            "found only %d of %d wanted distinct feasible architectures (%d layers x %d choices, limits: %s)",
            len(found),
            n,
            problem.num_layers,
            problem.num_choices,
            _limits_text(limits) or "none",
        )
    return found


def pareto_front(points: Sequence[Sequence[float]], senses: Sequence[str]) -> list[int]:
    """Indices (ascending) of the non-dominated points.

    Point p dominates q when p is at least as good in every objective and strictly better in one.
    Equal points therefore do not dominate each other: duplicates on the front are all kept.

    Args:
        points: One tuple of objective values per point.
        senses: ``"max"`` or ``"min"`` per objective.

    Raises:
        ValueError: A sense is neither ``"max"`` nor ``"min"``, points have the wrong length or
            contain NaN.
    """
    if any(s not in ("max", "min") for s in senses):
        raise ValueError(f"senses must be 'max' or 'min', got {list(senses)}")
    if len(points) == 0:
        return []
    values = np.asarray(points, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(senses):
        raise ValueError(f"each point needs {len(senses)} objective values, got an array of shape {values.shape}")
    if np.isnan(values).any():
        raise ValueError("points contain NaN; a NaN objective cannot be compared")
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    costs = values * np.array([-1.0 if s == "max" else 1.0 for s in senses])  # all objectives minimised
    # pymoo's exact (epsilon-free) sort: the same front as the pairwise definition, in O(n log n)
    # practice instead of O(n^2) (1.1 s for 5000 points before, under a millisecond now).
    return sorted(int(i) for i in NonDominatedSorting().do(costs, only_non_dominated_front=True))


class _Evaluator:
    """Asks ``problem.accuracy`` once per architecture, in batches, and remembers the order."""

    def __init__(self, problem: SearchProblem, limits: Limits) -> None:
        self.problem = problem
        self.limits = limits
        self.order: list[Arch] = []
        self.accuracy: dict[Arch, float] = {}

    def __call__(self, archs: Sequence[Arch]) -> list[float]:
        """Accuracies of ``archs``; only those not asked before go to the oracle (as one batch)."""
        new: list[Arch] = []
        for arch in dict.fromkeys(archs):  # in order, without repeats
            if arch not in self.accuracy:
                # strategies only pass feasible archs; this guards the promise to the caller
                if not is_feasible(self.problem.costs(arch), self.limits):
                    raise AssertionError(f"a strategy tried to evaluate {arch}, which violates the limits")
                new.append(arch)
        if new:
            accs = list(self.problem.accuracy(new))
            if len(accs) != len(new):
                raise ValueError(f"problem.accuracy returned {len(accs)} values for {len(new)} architectures")
            for arch, acc in zip(new, accs):
                self.accuracy[arch] = float(acc)
            self.order.extend(new)
            if self.problem.progress is not None:
                self.problem.progress(len(new))
        return [self.accuracy[a] for a in archs]


def _check_count(name: str, value: int, minimum: int) -> int:
    try:
        ok = not isinstance(value, bool) and int(value) == value and value >= minimum
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"strategy.{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class SearchStrategy(ABC):
    """Base class: owns the seed and the limits.

    Args:
        seed: Seed of the strategy's own generator (``np.random.default_rng(seed)``).
        max_madds: Upper bound on MAdds (cost ``"madds"``), or None for no bound.
        max_params: Upper bound on parameters (cost ``"params"``), or None.
        max_latency_ms: Upper bound on latency in ms (cost ``"latency_ms"``), or None.
    """

    def __init__(
        self,
        seed: int = 0,
        max_madds: float | None = None,
        max_params: float | None = None,
        max_latency_ms: float | None = None,
    ) -> None:
        self.seed = _check_count("seed", seed, 0)
        self.limits = limits_from(max_madds, max_params, max_latency_ms)

    @abstractmethod
    def search(self, problem: SearchProblem) -> list[Arch]:
        """Search ``problem``; returns the evaluated architectures in evaluation order, no duplicates."""

    def __repr__(self) -> str:
        limits = f", limits={{{_limits_text(self.limits)}}}" if self.limits else ""
        return f"{type(self).__name__}(seed={self.seed}{limits})"


class RandomSearch(SearchStrategy):
    """Uniform random search: distinct random architectures within the limits, all evaluated.

    Args:
        num_samples: Architectures to evaluate (fewer if the feasible space is smaller).
        batch_size: Architectures per ``accuracy`` call, so progress shows during the search.
    """

    def __init__(
        self,
        num_samples: int = 500,
        seed: int = 0,
        max_madds: float | None = None,
        max_params: float | None = None,
        max_latency_ms: float | None = None,
        batch_size: int = 50,
    ) -> None:
        super().__init__(seed, max_madds, max_params, max_latency_ms)
        self.num_samples = _check_count("num_samples", num_samples, 1)
        self.batch_size = _check_count("batch_size", batch_size, 1)

    def search(self, problem: SearchProblem) -> list[Arch]:
        rng = np.random.default_rng(self.seed)
        archs = sample_feasible(rng, problem, self.limits, self.num_samples)
        evaluate = _Evaluator(problem, self.limits)
        for start in range(0, len(archs), self.batch_size):
            evaluate(archs[start : start + self.batch_size])
        return evaluate.order


class ListSearch(SearchStrategy):
    """Evaluates exactly the given architectures, in order (e.g. a ranking study's ``archs.txt``).

    Args:
        archs: Architectures as index lists or '-'-joined index strings ("5-3-3-1-0-0-2-4").
        path: A file of architectures, one per line ('#' comments allowed), evaluated after ``archs``.
        batch_size: Architectures per ``accuracy`` call, so progress shows.
    """

    def __init__(
        self,
        archs: Sequence[Sequence[int] | str] = (),
        path: str | None = None,
        batch_size: int = 50,
        max_madds: float | None = None,
        max_params: float | None = None,
        max_latency_ms: float | None = None,
    ) -> None:
        super().__init__(0, max_madds, max_params, max_latency_ms)
        self.batch_size = _check_count("batch_size", batch_size, 1)
        self.path = path
        lines = [(f"strategy.archs[{i}]", a) for i, a in enumerate(archs)]
        if path is not None:
            try:
                text = Path(path).expanduser().read_text()
            except OSError as e:
                raise ConfigError(f"strategy.path: cannot read {path}: {e.strerror or e}") from None
            for number, line in enumerate(text.splitlines(), start=1):
                entry = line.split("#", 1)[0].strip()
                if entry:
                    lines.append((f"{path}:{number}", entry))
        if not lines:
            raise ConfigError("strategy=list needs architectures: strategy.path=<file> or strategy.archs=[...]")
        self.archs = [self._parse(where, a) for where, a in lines]

    @staticmethod
    def _parse(where: str, arch: Sequence[int] | str) -> Arch:
        parts = arch.split("-") if isinstance(arch, str) else list(arch)
        try:
            return tuple(int(p) for p in parts)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}: {arch!r} is not an architecture of choice indices like 5-3-3-1-0-0-2-4"
            ) from None

    def search(self, problem: SearchProblem) -> list[Arch]:
        for arch in self.archs:
            if len(arch) != problem.num_layers or not all(0 <= c < problem.num_choices for c in arch):
                raise ConfigError(
                    f"strategy=list: {'-'.join(map(str, arch))} is not an architecture of this space "
                    f"({problem.num_layers} layers, choices 0..{problem.num_choices - 1})"
                )
        unique = list(dict.fromkeys(self.archs))
        costs = {a: problem.costs(a) for a in unique}
        archs = [a for a in unique if is_feasible(costs[a], self.limits)]
        if not archs:
            smallest = {k: min(c[k] for c in costs.values()) for k in sorted({k for c in costs.values() for k in c})}
            raise ConfigError(
                f"strategy=list: none of the {len(unique)} architectures is within the limits "
                f"({_limits_text(self.limits)}; the smallest costs "
                f"among them: {', '.join(f'{k} {v:g}' for k, v in smallest.items())}): raise the limits or list "
                "other architectures"
            )
        evaluate = _Evaluator(problem, self.limits)
        for start in range(0, len(archs), self.batch_size):
            evaluate(archs[start : start + self.batch_size])
        return evaluate.order

    def __repr__(self) -> str:
        source = f"path={self.path!r}, " if self.path else ""
        return f"ListSearch({source}{len(self.archs)} architectures)"


class EvolutionSearch(SearchStrategy):
    """SPOS-style single-objective evolution maximising accuracy under the limits.

    The initial population is random and feasible. Each generation takes the ``parents`` most
    accurate architectures evaluated so far, makes ``num_mutations`` children by per-layer mutation
    and ``num_crossovers`` by uniform crossover of two distinct parents, keeps only feasible children
    not evaluated before, and evaluates them as one batch. Stops early when no new child can be made.

    Args:
        population: Size of the initial random population.
        generations: Generations after the initial population.
        parents: Top-k architectures (by accuracy, over everything evaluated) used as parents.
        mutation_prob: Per-layer probability of redrawing the choice (uniformly) in a mutation.
        num_mutations: Mutation children per generation.
        num_crossovers: Crossover children per generation.
    """

    def __init__(
        self,
        population: int = 50,
        generations: int = 20,
        parents: int = 10,
        mutation_prob: float = 0.1,
        num_mutations: int = 25,
        num_crossovers: int = 25,
        seed: int = 0,
        max_madds: float | None = None,
        max_params: float | None = None,
        max_latency_ms: float | None = None,
    ) -> None:
        super().__init__(seed, max_madds, max_params, max_latency_ms)
        self.population = _check_count("population", population, 1)
        self.generations = _check_count("generations", generations, 0)
        self.parents = _check_count("parents", parents, 1)
        self.num_mutations = _check_count("num_mutations", num_mutations, 0)
        self.num_crossovers = _check_count("num_crossovers", num_crossovers, 0)
        if not 0.0 < float(mutation_prob) <= 1.0:
            raise ConfigError(f"strategy.mutation_prob must be in (0, 1], got {mutation_prob!r}")
        self.mutation_prob = float(mutation_prob)

    def search(self, problem: SearchProblem) -> list[Arch]:
        rng = np.random.default_rng(self.seed)
        evaluate = _Evaluator(problem, self.limits)
        evaluate(sample_feasible(rng, problem, self.limits, self.population))
        for generation in range(self.generations):
            ranked = sorted(range(len(evaluate.order)), key=lambda i: -evaluate.accuracy[evaluate.order[i]])
            parents = [evaluate.order[i] for i in ranked[: self.parents]]
            seen = set(evaluate.order)
            children = self._children(rng, problem, parents, seen, self.num_mutations, self._mutate)
            if len(parents) >= 2:
                children += self._children(rng, problem, parents, seen, self.num_crossovers, self._crossover)
            if not children:
                log.info("evolution: no new feasible child in generation %d, stopping early", generation + 1)
                break
            evaluate(children)
        return evaluate.order

    def _mutate(self, rng: np.random.Generator, problem: SearchProblem, parents: list[Arch]) -> Arch:
        parent = np.array(parents[rng.integers(len(parents))])
        redraw = rng.random(problem.num_layers) < self.mutation_prob
        parent[redraw] = rng.integers(0, problem.num_choices, size=int(redraw.sum()))
        return tuple(int(c) for c in parent)

    def _crossover(self, rng: np.random.Generator, problem: SearchProblem, parents: list[Arch]) -> Arch:
        i, j = rng.choice(len(parents), size=2, replace=False)
        take_first = rng.random(problem.num_layers) < 0.5
        return tuple(int(c) for c in np.where(take_first, parents[i], parents[j]))

    def _children(
        self,
        rng: np.random.Generator,
        problem: SearchProblem,
        parents: list[Arch],
        seen: set[Arch],
        n: int,
        make: Callable[[np.random.Generator, SearchProblem, list[Arch]], Arch],
    ) -> list[Arch]:
        """Up to ``n`` new feasible children; ``seen`` grows with every child tried."""
        children: list[Arch] = []
        failures = 0
        while len(children) < n and failures < MAX_DRAWS_PER_SAMPLE:
            child = make(rng, problem, parents)
            if child in seen:
                failures += 1
                continue
            seen.add(child)
            if is_feasible(problem.costs(child), self.limits):
                children.append(child)
                failures = 0
            else:
                failures += 1
        return children


class _SeenElimination(DefaultDuplicateElimination):
    """pymoo duplicate elimination that also drops offspring proposed in any earlier generation.

    pymoo only compares offspring with each other and the current population; an architecture that
    dropped out of the population would be proposed again and waste a slot of the budget.
    """

    def __init__(self, seen: set[Arch]) -> None:
        super().__init__()
        self.seen = seen

    def _do(self, pop: Any, other: Any, is_duplicate: np.ndarray) -> np.ndarray:
        is_duplicate = super()._do(pop, other, is_duplicate)
        if other is None:
            for i, x in enumerate(pop.get("X")):
                if tuple(int(v) for v in x) in self.seen:
                    is_duplicate[i] = True
        return is_duplicate


class _PymooSearchProblem(Problem):
    """The search as a vectorised pymoo problem: minimise -accuracy and the cost objectives, G <= 0.

    Infeasible architectures never reach ``accuracy``: their objectives are set to +inf, which pymoo
    ignores because its constrained survival and tournament compare infeasible solutions by G only.
    """

    def __init__(self, problem: SearchProblem, objectives: Sequence[str], limits: Limits, evaluate: _Evaluator) -> None:
        super().__init__(
            n_var=problem.num_layers,
            n_obj=1 + len(objectives),
            n_ieq_constr=len(limits),
            xl=0,
            xu=problem.num_choices - 1,
            vtype=int,
        )
        self.search_problem = problem
        self.objectives = list(objectives)
        self.limits = dict(limits)
        self.oracle = evaluate
        self.seen: set[Arch] = set()

    def _evaluate(self, x: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        archs = [tuple(int(v) for v in row) for row in x]
        self.seen.update(archs)
        costs = [self.search_problem.costs(a) for a in archs]
        objectives = np.array([_cost_values(c, self.objectives, "strategy.objectives") for c in costs])
        objectives = objectives.reshape(len(archs), len(self.objectives))
        bounds = np.array(list(self.limits.values()))
        g = np.array([_cost_values(c, list(self.limits), "a strategy limit") for c in costs]).reshape(
            len(archs), len(self.limits)
        )
        g = g - bounds
        feasible = np.all(g <= 0, axis=1)
        neg_acc = np.full(len(archs), np.inf)
        if feasible.any():
            neg_acc[feasible] = -np.array(self.oracle([a for a, ok in zip(archs, feasible) if ok]))
        objectives[~feasible] = np.inf
        out["F"] = np.column_stack([neg_acc, objectives])
        if self.limits:
            out["G"] = g


class NSGA2Search(SearchStrategy):
    """Multi-objective NSGA-II (pymoo): maximise accuracy, minimise the named costs, under the limits.

    Encoding: one integer gene per layer in [0, m). The initial population is random and feasible
    (drawn by :func:`sample_feasible`, so unsatisfiable limits fail fast); variation is pymoo's
    uniform crossover (the choices are categorical, so genes are swapped, not blended) and polynomial
    mutation rounded to integers. Limits are inequality constraints ``cost - limit <= 0``. Duplicates
    of anything proposed before are eliminated, so each generation brings new architectures.

    Args:
        population: NSGA-II population size (and offspring per generation).
        generations: pymoo generations, counting the initial population as the first; about
            ``population * generations`` architectures are evaluated.
        objectives: Cost names to minimise alongside accuracy (keys of ``problem.costs``, e.g.
            ``"madds"``, ``"params"``, ``"latency_ms"``); may be empty (accuracy only).
    """

    def __init__(
        self,
        population: int = 40,
        generations: int = 10,
        objectives: Sequence[str] = ("madds",),
        seed: int = 0,
        max_madds: float | None = None,
        max_params: float | None = None,
        max_latency_ms: float | None = None,
    ) -> None:
        super().__init__(seed, max_madds, max_params, max_latency_ms)
        self.population = _check_count("population", population, 2)
        self.generations = _check_count("generations", generations, 1)
        if isinstance(objectives, str) or not all(isinstance(o, str) for o in objectives):
            raise ConfigError(f"strategy.objectives must be a list of cost names, e.g. [madds], got {objectives!r}")
        if len(set(objectives)) != len(objectives):
            raise ConfigError(f"strategy.objectives lists a cost twice: {list(objectives)}")
        self.objectives = tuple(objectives)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, objectives={list(self.objectives)})"

    def search(self, problem: SearchProblem) -> list[Arch]:
        rng = np.random.default_rng(self.seed)
        evaluate = _Evaluator(problem, self.limits)
        initial = sample_feasible(rng, problem, self.limits, self.population)
        _cost_values(problem.costs(initial[0]), self.objectives, "strategy.objectives")  # fail before pymoo
        if len(initial) < 2:  # nothing to recombine: the feasible space is (nearly) a single architecture
            evaluate(initial)
            return evaluate.order
        pymoo_problem = _PymooSearchProblem(problem, self.objectives, self.limits, evaluate)
        algorithm = NSGA2(
            pop_size=self.population,
            sampling=np.array(initial, dtype=int),
            crossover=UniformCrossover(),
            mutation=PM(eta=3.0, vtype=float, repair=RoundingRepair()),
            eliminate_duplicates=_SeenElimination(pymoo_problem.seen),
        )
        # pymoo gets its own seed drawn from ours: default_rng(self.seed) twice would be the same stream.
        # copy_algorithm=False keeps the elimination's reference to the problem's `seen` set.
        minimize(
            pymoo_problem,
            algorithm,
            ("n_gen", self.generations),
            seed=int(rng.integers(2**31)),
            verbose=False,
            copy_algorithm=False,
        )
        return evaluate.order
