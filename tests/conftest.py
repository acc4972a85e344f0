"""Shared fixtures: tiny search spaces and helpers to run the real entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fairnas.models import SearchSpace

ROOT = Path(__file__).resolve().parents[1]

# One intra-op thread per process: make test runs files in parallel (pytest-xdist), and torch's
# OpenMP threads spin-wait badly when more of them than cores compete. Child processes inherit it.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


def load_space(name: str) -> SearchSpace:
    return instantiate(OmegaConf.load(ROOT / "conf" / "search_space" / f"{name}.yaml"))


def tiny_space(dropout: float = 0.0) -> SearchSpace:
    """3 searchable layers x 3 choices (one of them skip), on 8x8 inputs: fast enough for float64 checks."""
    return SearchSpace.create(
        name="tiny",
        input_size=8,
        in_channels=3,
        num_classes=4,
        stem={"out": 4, "kernel": 3, "stride": 1},
        choices=["ir_k3_e1", "ir_k3_e2", "skip"],
        stages=[
            {"out": 4, "layers": 2, "stride": 1},
            {"out": 8, "layers": 1, "stride": 2, "choices": ["ir_k3_e2"]},
            {"out": 8, "layers": 1, "stride": 1},
        ],
        head={"channels": 8, "dropout": dropout},
    )


@pytest.fixture
def tiny() -> SearchSpace:
    return tiny_space()


def run_entry(
    script: str, *overrides: str, cwd: Path = ROOT, timeout: int = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Runs ``python <script> overrides...`` like a user would, returns the finished process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
