"""Optimizer parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


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
