"""Shared fixtures: tiny search spaces and helpers to run the real entry points."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
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


def compose_train(output_dir: Path, *overrides: str):
    """The train.py config for ``overrides``, writing to ``output_dir``, for an in-process
    ``fairnas.cli.train.train(cfg)``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


class SigtermAt(pl.Callback):
    """Test callback: the process sends itself SIGTERM after training step ``step`` (as a scheduler would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class SigintAt(pl.Callback):
    """Test callback: Ctrl+C in the middle of training step ``step`` (its gradients computed, the
    optimizer not yet stepped): the process sends itself SIGINT, as the terminal would."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.sent = False

    def on_before_optimizer_step(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step - 1 and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


class Preempted(Exception):
    """Raised by :class:`PreemptedAt`."""


class PreemptedAt(pl.Callback):
    """Test callback: after training step ``step``, writes what Lightning's SLURM handler writes
    (``hpc_ckpt_1.ckpt`` in the run directory), then stops the run as a pre-emption would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(Path(trainer.default_root_dir) / "hpc_ckpt_1.ckpt")
            raise Preempted(f"pre-empted after step {self.step}")
