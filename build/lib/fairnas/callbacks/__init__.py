"""Callbacks: telemetry (block usage), saving on interruption, and the checks and seeding a system
attaches around every training step (``step_checks``)."""

from fairnas.callbacks.block_usage import BlockUsageLogger, usage_csv, usage_heatmap
from fairnas.callbacks.interrupt import SaveOnInterrupt
from fairnas.callbacks.step_checks import PathDivergenceError, SamePathsCheck, StepSeed

__all__ = [
    "BlockUsageLogger",
    "PathDivergenceError",
    "SamePathsCheck",
    "SaveOnInterrupt",
    "StepSeed",
    "usage_csv",
    "usage_heatmap",
]
