"""Choosing the distributed strategy that keeps a fair step exact."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pytorch_lightning.strategies import DDPStrategy

from fairnas.config_error import ConfigError

# Strategy names that mean plain DDP, with the start method each implies.
_DDP_NAMES = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}


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
        raise ConfigError(f"trainer.devices={devices!r} is not a number, a list of ids or 'auto'") from None


def resolve_strategy(
    strategy: Any, accelerator: str, devices: Any, num_nodes: int = 1, find_unused_parameters: bool = True
) -> Any:
    """The strategy to hand to the Trainer.

    With more than one process and ``strategy`` 'auto' (or a plain DDP name such as 'ddp'), this is
    DDP with ``find_unused_parameters=True``: a fair step runs m backward passes through different
    paths, and only the last one (outside ``no_sync``) all-reduces every parameter that any path
    used. Default DDP refuses the second backward, and ``static_graph`` sees a changing graph.
    Other strategies (objects, or names such as 'fsdp') are passed through untouched.
    """
    name = strategy if isinstance(strategy, str) else None
    if name in _DDP_NAMES:
        return DDPStrategy(find_unused_parameters=find_unused_parameters, start_method=_DDP_NAMES[name])
    if name == "auto" and count_devices(accelerator, devices) * int(num_nodes) > 1:
        return DDPStrategy(find_unused_parameters=find_unused_parameters)
    return strategy
