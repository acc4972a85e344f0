"""Multi-objective NSGA-II through pymoo, with the adapters between pymoo and a SearchProblem."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.duplicate import DefaultDuplicateElimination
from pymoo.core.problem import Problem
from pymoo.operators.crossover.ux import UniformCrossover
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.optimize import minimize

from fairnas.arch import Arch
from fairnas.errors import ConfigError
from fairnas.search.problem import Limits, SearchProblem, cost_values, sample_feasible
from fairnas.search.strategies.base import AccuracyOracle, SearchStrategy, check_count


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

    def __init__(
        self, problem: SearchProblem, objectives: Sequence[str], limits: Limits, evaluate: AccuracyOracle
    ) -> None:
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
        objectives = np.array([cost_values(c, self.objectives, "strategy.objectives") for c in costs])
        objectives = objectives.reshape(len(archs), len(self.objectives))
        bounds = np.array(list(self.limits.values()))
        g = np.array([cost_values(c, list(self.limits), "a strategy limit") for c in costs]).reshape(
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
        self.population = check_count("population", population, 2)
        self.generations = check_count("generations", generations, 1)
        if isinstance(objectives, str) or not all(isinstance(o, str) for o in objectives):
            raise ConfigError(f"strategy.objectives must be a list of cost names, e.g. [madds], got {objectives!r}")
        if len(set(objectives)) != len(objectives):
            raise ConfigError(f"strategy.objectives lists a cost twice: {list(objectives)}")
        self.objectives = tuple(objectives)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, objectives={list(self.objectives)})"

    def search(self, problem: SearchProblem) -> list[Arch]:
        rng = np.random.default_rng(self.seed)
        evaluate = self.oracle(problem)
        initial = sample_feasible(rng, problem, self.limits, self.population)
        cost_values(problem.costs(initial[0]), self.objectives, "strategy.objectives")  # fail before pymoo
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
