"""The Lightning systems: fair supernet training and stand-alone training."""

from fairnas.callbacks.step_checks import PathDivergenceError
from fairnas.errors import NonFiniteLossError
from fairnas.system.ddp import count_devices, resolve_strategy
from fairnas.system.nonfinite import NonFiniteGuard
from fairnas.system.optim import cosine_with_warmup, param_groups
from fairnas.system.systems import StandaloneSystem, SupernetSystem

__all__ = [
    "NonFiniteGuard",
    "NonFiniteLossError",
    "PathDivergenceError",
    "StandaloneSystem",
    "SupernetSystem",
    "cosine_with_warmup",
    "count_devices",
    "param_groups",
    "resolve_strategy",
]
