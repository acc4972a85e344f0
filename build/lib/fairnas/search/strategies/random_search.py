"""Uniform random search."""

from __future__ import annotations

import numpy as np

from fairnas.arch import Arch
from fairnas.search.problem import SearchProblem, sample_feasible
from fairnas.search.strategies.base import SearchStrategy, check_count


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
        self.num_samples = check_count("num_samples", num_samples, 1)
        self.batch_size = check_count("batch_size", batch_size, 1)

    def search(self, problem: SearchProblem) -> list[Arch]:
        rng = np.random.default_rng(self.seed)
        archs = sample_feasible(rng, problem, self.limits, self.num_samples)
        evaluate = self.oracle(problem)
        for start in range(0, len(archs), self.batch_size):
            evaluate(archs[start : start + self.batch_size])
        return evaluate.order
