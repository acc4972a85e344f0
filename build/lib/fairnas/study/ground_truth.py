"""The ground truth of a ranking study: one row per architecture, one accuracy column per seed."""

from __future__ import annotations

from typing import Any

import numpy as np


class GroundTruth:
    """Rows of the ground truth (arch, madds, params, one accuracy column per seed) with column access."""

    def __init__(self, rows: list[dict[str, Any]], seed_columns: list[str]) -> None:
        self.rows = rows
        self.seed_columns = seed_columns

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, columns: str | list[str]) -> np.ndarray:
        if isinstance(columns, str):
            return np.array([row[columns] for row in self.rows])
        return np.array([[row[c] for c in columns] for row in self.rows], dtype=np.float64)

    @property
    def mean(self) -> np.ndarray:
        """Mean accuracy over seeds: the ground truth the supernets are scored against."""
        return self[self.seed_columns].mean(axis=1)
