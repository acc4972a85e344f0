"""Many paths of a supernet run together: merged on common prefixes, each prefix with its own BN statistics.

The one way fairnas scores architectures with a supernet's weights: validation during training
(:class:`fairnas.system.SupernetSystem`) and the search's evaluator
(:class:`fairnas.search.SupernetEvaluator`) both build a :class:`PathTree`, recalibrate it on
fixed training batches and read every path's logits from it, so the two give the same accuracy for
the same architecture and batches. A layer shared by several paths runs once per batch; the
statistics are exactly those of recalibrating each path on its own
(:func:`fairnas.models.bn.recalibrate`), because a layer's BN statistics depend only on its prefix
(train-mode BN normalises with batch statistics, so running statistics never feed back).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from fairnas.models.bn import bn_layers
from fairnas.models.supernet import Supernet

_STATS = ("running_mean", "running_var", "num_batches_tracked")


class _Node:
    """One module of a path in the prefix tree, with the BN statistics it has under its prefix."""

    __slots__ = ("module", "bns", "stats", "children", "leaf")

    def __init__(self, module: nn.Module, own_stats: bool) -> None:
        self.module = module
        self.bns = bn_layers([module])
        # What reset_running_stats() leaves: mean 0, variance 1, no batch counted; None: the layers' own.
        self.stats = None if own_stats else [
            (torch.zeros_like(m.running_mean), torch.ones_like(m.running_var), torch.zeros_like(m.num_batches_tracked))
            for m in self.bns
        ]  # fmt: skip
        self.children: dict[int, _Node] = {}
        self.leaf: int | None = None  # the path (index) whose head this node is


class PathTree:
    """The paths of a supernet merged on their common prefixes: stem -> one block per layer -> head.

    Each node owns BN statistics (initially reset) that :meth:`installed` swaps into the
    supernet's BN layers, by reference, whenever the node runs: training-mode passes then update
    the node's own tensors in place, exactly as :func:`fairnas.models.bn.recalibrate` updates
    the layers' tensors for a single path. The supernet's own statistics are never changed.

    Args:
        supernet: The supernet whose modules the paths run through.
        paths: The architectures, one leaf each (in this order).
        own_stats: Use the supernet's running statistics instead (no recalibration; every path
            then sees the statistics of all paths mixed, as training left them).
    """

    def __init__(self, supernet: Supernet, paths: Sequence[tuple[int, ...]], own_stats: bool = False) -> None:
        self.num_paths = len(paths)
        self.own_stats = own_stats
        self.root = _Node(supernet.stem, own_stats)
        self.bns = {id(m): m for m in self.root.bns}
        for index, arch in enumerate(paths):
            node = self.root
            for block in supernet.blocks(arch):  # validates the path
                child = node.children.get(id(block))  # a block belongs to one layer: it names the choice
                if child is None:
                    child = node.children[id(block)] = _Node(block, own_stats)
                    self.bns.update((id(m), m) for m in child.bns)
                node = child
            head = node.children[-1 - index] = _Node(supernet.head, own_stats)  # one head per path: its own statistics
            head.leaf = index
            self.bns.update((id(m), m) for m in head.bns)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Lets the nodes swap their statistics in; the layers' own tensors, modes and momenta come back after."""
        saved = [(m, {k: m._buffers[k] for k in _STATS}, m.training, m.momentum) for m in self.bns.values()]
        try:
            yield
        finally:
            for m, buffers, training, momentum in saved:
                m._buffers.update(buffers)
                m.train(training)
                m.momentum = momentum

    def set_training(self, training: bool) -> None:
        """Training mode with a cumulative average (calibration) or evaluation mode, for the BN layers only."""
        for m in self.bns.values():
            m.train(training)
            if training:
                m.momentum = None

    @torch.no_grad()
    def calibrate(self, batches: Iterable[Tensor]) -> None:
        """Re-estimates every node's statistics as the exact mean over ``batches`` (input tensors,
        already on the supernet's device, dtype and layout): one pass per batch for all paths."""
        if self.own_stats:
            raise ValueError("a PathTree with own_stats=True uses the supernet's statistics: nothing to calibrate")
        with self.installed():
            self.set_training(True)
            for x in batches:
                self.run(x, None)

    def logits(self, x: Tensor) -> list[Tensor]:
        """Every path's output for the batch ``x``, with BN in evaluation mode (shared prefixes run once)."""
        with self.installed():
            self.set_training(False)
            return self.collect(x)

    def collect(self, x: Tensor) -> list[Tensor]:
        """Every path's output for ``x`` in the current modes (call inside :meth:`installed`)."""
        out: list[Tensor] = [x] * self.num_paths
        self.run(x, out.__setitem__)
        return out

    def run(self, x: Tensor, visit: Callable[[int, Tensor], None] | None) -> None:
        """One batch through every path; ``visit(path index, logits)`` at each head."""
        self._run(self.root, x, visit)

    def _run(self, node: _Node, x: Tensor, visit: Callable[[int, Tensor], None] | None) -> None:
        while True:
            if node.stats is not None:
                for m, stats in zip(node.bns, node.stats, strict=True):
                    m._buffers.update(zip(_STATS, stats))
            x = node.module(x)  # along a chain without branches only the newest activation is kept
            if node.leaf is not None:
                if visit is not None:
                    visit(node.leaf, x)
                return
            if len(node.children) != 1:
                break
            (node,) = node.children.values()
        for child in node.children.values():
            self._run(child, x, visit)
