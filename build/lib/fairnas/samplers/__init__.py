"""Path samplers: pure functions of (seed, step), no torch."""

from fairnas.samplers.samplers import (
    BiasedSampler,
    FixedSampler,
    PathSampler,
    StrictFairSampler,
    UniformSampler,
)

__all__ = ["BiasedSampler", "FixedSampler", "PathSampler", "StrictFairSampler", "UniformSampler"]
