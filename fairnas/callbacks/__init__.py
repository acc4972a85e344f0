"""Callbacks: telemetry (block usage) and the checks and seeding a system
attaches around every training step (``step_checks``)."""

from fairnas.callbacks.block_usage import BlockUsageLogger, usage_csv, usage_heatmap
from fairnas.callbacks.step_checks import PathDivergenceError, SamePathsCheck, StepSeed

__all__ = [
    "BlockUsageLogger",
    "PathDivergenceError",
    "SamePathsCheck",
    "StepSeed",
    "usage_csv",
    "usage_heatmap",
]
