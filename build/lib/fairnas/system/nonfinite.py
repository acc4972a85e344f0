"""What an update does when its loss, a gradient or a BatchNorm running statistic becomes NaN or infinite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from fairnas.errors import ConfigError, NonFiniteLossError
from fairnas.models.bn import BNSnapshot, bn_layers

NONFINITE_POLICIES = ("stop", "skip")


def nonfinite_state(module: nn.Module, optimizer: Any = None) -> list[str]:
    """Names of the weights, buffers and optimizer-state tensors that hold a NaN or an infinity."""
    bad = [name for name, t in module.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    optimizer = getattr(optimizer, "optimizer", optimizer)  # Lightning's wrapper
    if optimizer is not None:
        for i, state in enumerate(optimizer.state.values()):
            bad += [
                f"optimizer.state[{i}].{key}"
                for key, t in state.items()
                if isinstance(t, Tensor) and t.is_floating_point() and not torch.isfinite(t).all()
            ]
    return bad


class NonFiniteGuard:
    """The NaN/inf policy of one system (``stop`` or ``skip``), and the BN statistics it rolls back.

    Around each update, the system calls :meth:`before_update` (a copy of the BN running
    statistics, which the forwards change before any gradient can be checked), then
    :meth:`bn_finite` once the backward passes are done, and :meth:`reject` when the update has to
    be dropped: the gradients are cleared, the BN statistics restored and the update counted in
    the system's ``nonfinite_steps`` buffer (checkpointed). Then ``skip`` warns and training goes
    on; ``stop`` saves the state before the update as ``checkpoints/last_good.ckpt`` (only when it
    is all finite) and raises :class:`~fairnas.errors.NonFiniteLossError`.
    """

    def __init__(self, policy: str = "stop") -> None:
        if policy not in NONFINITE_POLICIES:
            raise ConfigError(f"system.nonfinite must be one of {NONFINITE_POLICIES}, got {policy!r}")
        self.policy = policy
        self._snapshot: BNSnapshot | None = None  # made on first use

    def before_update(self, system: pl.LightningModule) -> None:
        """Copies the BN running statistics before an update, so a NaN/inf forward can be undone."""
        if self._snapshot is None:
            self._snapshot = BNSnapshot(bn_layers([system]))
        self._snapshot.save()

    def bn_finite(self, system: pl.LightningModule) -> bool:
        """Whether every BN running statistic is finite after this update's forwards (the same answer on
        every DDP rank: each rank's statistics come from its own batches, so the verdict is all-reduced)."""
        if self._snapshot is None:
            return True
        bad = self._snapshot.finite().to(system.device)
        if system.trainer.world_size > 1:
            bad = system.trainer.strategy.reduce(bad, reduce_op="max")
        return not bool(bad)

    def reject(self, system: pl.LightningModule, optimizer: Any, what: str = "the loss or a gradient") -> None:
        """Drops the update in progress; under ``stop``, saves the state before it and raises."""
        optimizer.zero_grad(set_to_none=True)
        if self._snapshot is not None:
            self._snapshot.restore()  # the poisoned forwards updated them
        system.nonfinite_steps += 1
        system.log("train/nonfinite_steps", system.nonfinite_steps.float())
        step = system.global_step
        if self.policy == "skip":
            rank_zero_warn(f"{what} became NaN/inf at step {step}: update skipped (system.nonfinite=skip)")
            return
        advice = (
            "Lower optimizer.lr, keep system.grad_clip on, or set system.nonfinite=skip to skip such updates instead."
        )
        bad = nonfinite_state(system, optimizer)
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise NonFiniteLossError(
                f"{what} became NaN/inf at step {step}, and the state before that step is not finite either "
                f"({len(bad)} tensors: {shown}), so no last_good.ckpt was written: resume from a checkpoint of an "
                f"earlier step, if any. {advice}"
            )
        path = Path(system.trainer.default_root_dir) / "checkpoints" / "last_good.ckpt"
        system.trainer.save_checkpoint(path, weights_only=False)  # the state before this update, checked finite
        raise NonFiniteLossError(
            f"{what} became NaN/inf at step {step}; the last good state (weights, buffers and optimizer state "
            f"all finite) is saved in {path} (resume with ckpt_path=...). {advice}"
        )
