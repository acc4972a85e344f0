"""What a system needs around every training step, one callback per job: the dropout seed of the
step, and (under DDP) the check that every rank trains the same paths.

A system attaches these itself (``configure_callbacks``), so no config can leave them out: exact
resume depends on the first, the fairness of a DDP run is checked by the second.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from fairnas.data.base import derive_seed


class PathDivergenceError(RuntimeError):
    """DDP ranks trained different paths in the same step."""


class StepSeed(Callback):
    """Seeds torch's global generator from (seed, step) before every training step.

    The global generator drives dropout (every other draw uses an owned generator). Seeding it per
    step makes the masks independent of whatever drew from it before (data loader set-up,
    validation), so a resumed run draws exactly what an uninterrupted one did.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        torch.manual_seed(derive_seed(self.seed, trainer.global_step))


class SamePathsCheck(Callback):
    """Under DDP, checks every ``every_n_steps`` steps (0: never) that all ranks are about to train the
    same paths, and raises :class:`PathDivergenceError` otherwise.

    The system's sampler derives the paths from (seed, step) only, so this recomputes them for the
    coming step and compares a digest across ranks: one small all-reduce.
    """

    def __init__(self, every_n_steps: int = 1) -> None:
        self.every_n_steps = int(every_n_steps)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if trainer.world_size == 1 or not self.every_n_steps or step % self.every_n_steps:
            return
        groups = pl_module.sampler.sample(step)
        digest = int.from_bytes(hashlib.blake2b(repr(groups).encode(), digest_size=7).digest(), "big")
        local = torch.tensor([digest, -digest], dtype=torch.long, device=pl_module.device)
        both = trainer.strategy.reduce(local.clone(), reduce_op="max")
        if int(both[0]) != -int(both[1]):
            raise PathDivergenceError(
                f"DDP ranks drew different paths at step {step} (rank {trainer.global_rank}: {groups}). Paths must "
                "come from the sampler, which derives them from (seed, step) only: check that every rank has "
                "the same seed and that nothing else draws paths."
            )
