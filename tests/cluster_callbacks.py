"""Callbacks the cluster tests add to runs that SLURM or torchrun start (importable there: no pytest)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from fairnas.utils.slurm import requeue_signals


class WaitForRequeueSignal(pl.Callback):
    """After step ``step``, writes ``<run dir>/at_step_<step>`` and waits (at most ``timeout`` s) until
    this process has received the requeue signal, so that it lands in the middle of training however
    late the scheduler sends it. Changes nothing trained; a run already past ``step`` never waits."""

    def __init__(self, step: int, timeout: float = 150.0) -> None:
        self.step = step
        self.timeout = timeout

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step != self.step:
            return
        if trainer.is_global_zero:
            (Path(trainer.default_root_dir) / f"at_step_{self.step}").touch()
        deadline = time.monotonic() + self.timeout
        while requeue_signals.requested is None and time.monotonic() < deadline:
            time.sleep(0.05)


class KillRankOnce(pl.Callback):
    """Kills this process (SIGKILL) after step ``step`` on global rank ``rank``, in torchrun's first
    attempt only (``TORCHELASTIC_RESTART_COUNT`` 0): a rank lost mid-run, which an elastic restart recovers."""

    def __init__(self, step: int, rank: int = 1) -> None:
        self.step = step
        self.rank = rank

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if first_attempt and trainer.global_rank == self.rank and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
