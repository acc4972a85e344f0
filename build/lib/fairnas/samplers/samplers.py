"""Path samplers: which single-path models a training step trains, and how they are grouped.

A sampler is a pure function of (seed, step): ``sampler.sample(step)`` builds a fresh generator
from ``(seed, step)`` and draws from it. Every DDP rank therefore draws the same paths, and a
resumed run draws exactly what an uninterrupted one would, with no hidden RNG state to carry.

``sample`` returns a list of *update groups*; each group is a list of architectures whose
gradients are accumulated into ONE optimizer step:

* ``StrictFairSampler`` (sf): one group of m paths that use every choice of every layer once.
* ``UniformSampler`` (ef, SPOS): k independent uniform paths, one optimizer step each.
* ``BiasedSampler``: like ef but with unequal per-choice probabilities (an unfair baseline).
* ``FixedSampler``: one given architecture, one optimizer step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from fairnas.arch import Arch
from fairnas.errors import ConfigError


class PathSampler(ABC):
    """Base class: owns the seed and the shape (L layers, m choices) of the space.

    Args:
        num_layers: Number of searchable layers L.
        num_choices: Number of choices m per layer.
        seed: Run seed; paths depend only on (seed, step).
    """

    def __init__(self, num_layers: int, num_choices: int, seed: int = 0) -> None:
        if num_layers < 1 or num_choices < 1:
            raise ConfigError(f"a sampler needs at least one layer and one choice, got L={num_layers}, m={num_choices}")
        self.num_layers = num_layers
        self.num_choices = num_choices
        self.seed = int(seed)

    def generator(self, step: int) -> np.random.Generator:
        """The generator of one step, derived from (seed, step) only."""
        return np.random.default_rng([self.seed, int(step)])

    @abstractmethod
    def sample(self, step: int) -> list[list[Arch]]:
        """Update groups of step ``step``: each inner list is accumulated into one optimizer step."""

    @property
    def paths_per_step(self) -> int:
        """Forward/backward passes per training step."""
        return sum(len(g) for g in self.sample(0))

    @property
    def updates_per_step(self) -> int:
        """Optimizer steps per training step (per batch)."""
        return len(self.sample(0))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(L={self.num_layers}, m={self.num_choices}, seed={self.seed})"


class StrictFairSampler(PathSampler):
    """Strict fairness: m paths from one independent random permutation of the choices per layer."""

    def sample(self, step: int) -> list[list[Arch]]:
        rng = self.generator(step)
        perms = np.stack([rng.permutation(self.num_choices) for _ in range(self.num_layers)])
        return [[tuple(int(c) for c in perms[:, k]) for k in range(self.num_choices)]]


class _IndependentSampler(PathSampler):
    """Draws paths independently per layer from per-choice probabilities, one update per path."""

    probs: np.ndarray | None = None  # per-choice probabilities; None = uniform

    def __init__(self, num_layers: int, num_choices: int, seed: int = 0, num_paths: int | None = None) -> None:
        super().__init__(num_layers, num_choices, seed)
        self.num_paths = num_choices if num_paths is None else int(num_paths)
        if self.num_paths < 1:
            raise ConfigError(f"sampler.num_paths must be at least 1, got {num_paths}")

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, num_paths={self.num_paths})"

    def sample(self, step: int) -> list[list[Arch]]:
        rng = self.generator(step)
        draws = rng.choice(self.num_choices, size=(self.num_paths, self.num_layers), p=self.probs)
        return [[tuple(int(c) for c in row)] for row in draws]


class UniformSampler(_IndependentSampler):
    """Expectation fairness (SPOS): uniform independent choices, one optimizer step per path.

    Args:
        num_paths: Paths (= optimizer steps) per training step; default m, the same number of
            forward/backward passes as strict fairness (the paper's EF baseline).
    """


class BiasedSampler(_IndependentSampler):
    """An unfair baseline: choice c of every layer is drawn with probability ``probs[c]``.

    Args:
        probs: m non-negative weights (normalised here). Default: proportional to 1, 2, ..., m,
            so later choices are trained up to m times as often as the first.
    """

    def __init__(
        self,
        num_layers: int,
        num_choices: int,
        seed: int = 0,
        num_paths: int | None = None,
        probs: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_layers, num_choices, seed, num_paths)
        weights = np.arange(1, num_choices + 1, dtype=float) if probs is None else np.asarray(probs, dtype=float)
        if weights.shape != (num_choices,) or (weights < 0).any() or weights.sum() <= 0:
            raise ConfigError(
                f"sampler.probs must be {num_choices} non-negative weights with a positive sum "
                f"(one per choice), got {list(probs) if probs is not None else None}"
            )
        self.probs = weights / weights.sum()


class FixedSampler(PathSampler):
    """Always the same architecture (trains one path of the supernet).

    Args:
        arch: The architecture, already validated against the space.
    """

    def __init__(self, num_layers: int, num_choices: int, arch: Sequence[int], seed: int = 0) -> None:
        super().__init__(num_layers, num_choices, seed)
        self.arch = tuple(int(c) for c in arch)
        if len(self.arch) != num_layers or not all(0 <= c < num_choices for c in self.arch):
            raise ConfigError(
                f"fixed architecture {self.arch} does not fit {num_layers} layers x {num_choices} choices"
            )

    def sample(self, step: int) -> list[list[Arch]]:
        return [[self.arch]]
