"""Callbacks: telemetry that observes a system and changes nothing."""

from fairnas.callbacks.block_usage import BlockUsageLogger, usage_csv, usage_heatmap
from fairnas.callbacks.interrupt import SaveOnInterrupt

__all__ = ["BlockUsageLogger", "SaveOnInterrupt", "usage_csv", "usage_heatmap"]
