"""BatchNorm statistics: recalibration of one path of a supernet, and snapshots to undo changes.

A supernet's running BN statistics mix every path it was trained with, so a single path evaluated
with them is misjudged. Standard practice (SPOS, OFA, FairNAS reimplementations) is to reset the
statistics of the path's BN layers and re-estimate them on a fixed set of training batches before
evaluating it. These helpers do that (:func:`recalibrate`; many paths at once:
:class:`fairnas.models.path_tree.PathTree`), and :class:`BNSnapshot` saves and restores statistics:
evaluating never changes the supernet's state, and training undoes the statistics of a NaN/inf
update.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

BNStats = list[tuple[Tensor, Tensor, Tensor]]


def bn_layers(modules: Iterable[nn.Module]) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer inside ``modules`` (each counted once)."""
    seen: dict[int, nn.modules.batchnorm._BatchNorm] = {}
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                seen.setdefault(id(m), m)
    return list(seen.values())


def get_stats(layers: Sequence[nn.modules.batchnorm._BatchNorm]) -> BNStats:
    return [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]


class BNSnapshot:
    """A copy of the running statistics of BN layers, taken by :meth:`save`, put back by :meth:`restore`.

    The copies are allocated once and refilled in place with one fused copy (``torch._foreach_copy_``),
    so a training step can save every step at the cost of a memcpy.

    Args:
        layers: The BN layers (e.g. :func:`bn_layers` of a module).
    """

    def __init__(self, layers: Sequence[nn.modules.batchnorm._BatchNorm]) -> None:
        self.buffers = [b for m in layers for b in (m.running_mean, m.running_var, m.num_batches_tracked)]
        self.copies = [b.clone() for b in self.buffers]

    def save(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.copies, self.buffers)

    def restore(self) -> None:
        if self.buffers:
            with torch.no_grad():
                torch._foreach_copy_(self.buffers, self.copies)

    def finite(self) -> Tensor:
        """A 0-d float tensor: 0 when every live statistic is finite, 1 when one is NaN/inf (ready to all-reduce)."""
        stats = [b for b in self.buffers if b.is_floating_point()]
        if not stats:
            return torch.zeros(())
        return (~torch.stack(torch._foreach_norm(stats)).isfinite()).any().to(torch.float32)


@contextlib.contextmanager
def preserved_stats(layers: Sequence[nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """Restores the running statistics of ``layers`` on exit, whatever happens inside."""
    snapshot = BNSnapshot(layers)
    try:
        yield
    finally:
        snapshot.restore()


@torch.no_grad()
def recalibrate(
    forward: Callable[[Tensor], Tensor],
    layers: Sequence[nn.modules.batchnorm._BatchNorm],
    batches: Iterable[Tensor],
) -> BNStats:
    """Re-estimates the statistics of ``layers`` as the exact average over ``batches``.

    Args:
        forward: Runs the path on a batch of inputs (the BN layers must be on that path).
        layers: The BN layers to recalibrate; they are put in training mode for the passes and
            returned to their previous mode after.
        batches: Input tensors (already on the right device and dtype).

    Returns:
        The new statistics (also left in the layers).
    """
    modes = [(m.training, m.momentum) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over the calibration batches
        m.train()
    try:
        for x in batches:
            forward(x)
    finally:
        for m, (training, momentum) in zip(layers, modes, strict=True):
            m.train(training)
            m.momentum = momentum
    return get_stats(layers)
