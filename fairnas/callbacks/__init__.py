"""Callbacks: telemetry that observes a system and changes nothing."""

from fairnas.callbacks.block_usage import BlockUsageLogger, usage_csv, usage_heatmap

__all__ = ["BlockUsageLogger", "usage_csv", "usage_heatmap"]
