"""Optimizer parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


def param_groups(module: nn.Module, weight_decay_bn_bias: bool) -> list[dict]:
    """Parameter groups; BN affine parameters and biases (all 1-d tensors) get no weight decay unless asked."""
    if weight_decay_bn_bias:
        return [{"params": [p for p in module.parameters() if p.requires_grad]}]
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def cosine_with_warmup(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.0, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warm-up then cosine decay, stepped once per optimizer step.

    Args:
        optimizer: The optimizer.
        total_steps: Optimizer steps of the whole run.
        warmup_fraction: Fraction of the steps spent warming up linearly from 0.
        min_lr_ratio: Final learning rate as a fraction of the initial one.
    """
    total = max(1, int(total_steps))
    warmup = int(round(warmup_fraction * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def schedule_difference(
    optimizer: Callable[..., Optimizer],
    scheduler: Callable[..., LRScheduler],
    horizon: int,
    other_horizon: int,
    steps: int,
    limit: int = 20_000,
) -> tuple[int, float, float] | None:
    """The first of the first ``steps`` optimizer steps (at most ``limit``) whose learning rate differs between
    the schedule planned over ``horizon`` steps and over ``other_horizon`` steps: ``(step, lr, other lr)``, or None.

    Steps both schedules on a one-parameter probe optimizer, so any scheduler factory
    ``scheduler(optimizer, total_steps=...)`` can be compared.
    """
    runs = []
    for total in (horizon, other_horizon):
        probe = optimizer([nn.Parameter(torch.zeros(1))])
        runs.append((probe, scheduler(probe, total_steps=total)))
    for step in range(min(steps, limit)):
        lrs = [probe.param_groups[0]["lr"] for probe, _ in runs]
        if lrs[0] != lrs[1]:
            return step, lrs[0], lrs[1]
        for probe, sched in runs:
            probe.step()  # no gradient: nothing changes, but the scheduler sees a step was taken
            sched.step()
    return None
