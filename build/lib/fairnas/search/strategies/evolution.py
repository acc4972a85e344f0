"""SPOS-style single-objective evolution under limits."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from fairnas.arch import Arch
from fairnas.errors import ConfigError
from fairnas.search.problem import MAX_DRAWS_PER_SAMPLE, SearchProblem, is_feasible, sample_feasible
from fairnas.search.strategies.base import SearchStrategy, check_count

log = logging.getLogger(__name__)


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
        self.population = check_count("population", population, 1)
        self.generations = check_count("generations", generations, 0)
        self.parents = check_count("parents", parents, 1)
        self.num_mutations = check_count("num_mutations", num_mutations, 0)
        self.num_crossovers = check_count("num_crossovers", num_crossovers, 0)
        if not 0.0 < float(mutation_prob) <= 1.0:
            raise ConfigError(f"strategy.mutation_prob must be in (0, 1], got {mutation_prob!r}")
        self.mutation_prob = float(mutation_prob)

    def search(self, problem: SearchProblem) -> list[Arch]:
        rng = np.random.default_rng(self.seed)
        evaluate = self.oracle(problem)
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
