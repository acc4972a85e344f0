"""Choosing the distributed strategy that keeps a fair step exact."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pytorch_lightning.strategies import DDPStrategy


def count_devices(accelerator: str, devices: Any) -> int:
    """How many devices Lightning will use per node for ``(accelerator, devices)``."""
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if text in ("auto", "-1"):
        return torch.cuda.device_count() if gpu else 1
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"trainer.devices={devices!r} is not a number, a list or 'auto'") from None


def resolve_strategy(
    strategy: Any, accelerator: str, devices: Any, num_nodes: int = 1, find_unused_parameters: bool = True
) -> Any:
    """The strategy to hand to the Trainer.

    With more than one process and ``strategy='auto'`` this is DDP with
    ``find_unused_parameters=True``: a fair step runs m backward passes through different paths,
    and only the last one (outside ``no_sync``) all-reduces every parameter that any path used.
    Default DDP refuses the second backward, and ``static_graph`` sees a changing graph. Explicit
    strategies are passed through untouched.
    """
    if strategy != "auto":
        return strategy
    if count_devices(accelerator, devices) * int(num_nodes) > 1:
        return DDPStrategy(find_unused_parameters=find_unused_parameters)
    return "auto"
