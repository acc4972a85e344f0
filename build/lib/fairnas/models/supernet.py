"""The supernet (every candidate block of every layer) and stand-alone child networks."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import Tensor, nn

from fairnas.models.blocks import ConvBNAct, Head, init_weights
from fairnas.models.space import LayerSpec, SearchSpace


def _path_blocks(space: SearchSpace, arch: Sequence[int], modules: Sequence[nn.Module]) -> list[nn.Module]:
    """The modules of a path without the blocks that are the identity at their layer's shape."""
    layers: list[LayerSpec] = list(space.layers)
    choices = space.full_choices(arch)
    return [
        module
        for module, layer, c in zip(modules, layers, choices, strict=True)
        if not layer.choices[c].is_identity(layer.in_channels, layer.out_channels, layer.stride)
    ]


class ChildNet(nn.Module):
    """A single architecture as a plain network: only its chosen blocks, no choice machinery.

    ``blocks`` holds only real blocks: :meth:`Supernet.export` and :func:`build_child` drop the
    choices that are the identity at their layer (``skip``, ``id`` at stride 1), as their block
    kinds say (:meth:`fairnas.models.registry.BlockSpec.is_identity`).
    """

    def __init__(self, stem: nn.Module, blocks: Sequence[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


class Supernet(nn.Module):
    """All candidate blocks of a search space; the path is an explicit argument of ``forward``.

    Args:
        space: The search space.
        num_classes: Classes of the data (default: the space's nominal number).
        in_channels: Channels of the input images (default: the space's nominal number).
        seed: Seed of the weight initialisation.
    """

    def __init__(
        self, space: SearchSpace, num_classes: int | None = None, in_channels: int | None = None, seed: int = 0
    ) -> None:
        super().__init__()
        self.space = space
        self.num_classes = num_classes or space.num_classes
        self.in_channels = in_channels or space.in_channels
        act = space.activation
        self.stem = ConvBNAct(self.in_channels, space.stem_channels, space.stem_kernel, space.stem_stride, act=act)
        self.layers = nn.ModuleList(
            nn.ModuleList(c.build(layer.in_channels, layer.out_channels, layer.stride, act) for c in layer.choices)
            for layer in space.layers
        )
        last = space.layers[-1].out_channels
        self.head = Head(last, space.head_channels, self.num_classes, space.dropout, act)
        init_weights(self, seed)

    def forward(self, x: Tensor, arch: Sequence[int]) -> Tensor:
        """Runs the single path ``arch`` (one choice index per searchable layer)."""
        choices = self.space.full_choices(self._check(arch))
        x = self.stem(x)
        for layer, choice in zip(self.layers, choices, strict=True):
            x = layer[choice](x)
        return self.head(x)

    def _check(self, arch: Sequence[int]) -> tuple[int, ...]:
        m = self.space.num_choices
        if len(arch) == self.space.num_layers and all(type(c) is int and 0 <= c < m for c in arch):
            return tuple(arch)
        return self.space.parse_arch(arch)  # validates, or raises an error naming the layer

    def blocks(self, arch: Sequence[int]) -> list[nn.Module]:
        """The modules of every layer on the path ``arch`` (fixed layers included)."""
        choices = self.space.full_choices(self._check(arch))
        return [layer[c] for layer, c in zip(self.layers, choices, strict=True)]

    def path_modules(self, arch: Sequence[int]) -> list[nn.Module]:
        """Every module that the path ``arch`` runs through: stem, blocks, head."""
        return [self.stem, *self.blocks(arch), self.head]

    def choice_blocks(self, layer: int) -> nn.ModuleList:
        """The m candidate blocks of searchable layer ``layer``."""
        return self.layers[self.space.searchable_indices[layer]]

    def export(self, arch: Sequence[int]) -> ChildNet:
        """A stand-alone copy of one path with the supernet's (inherited) weights and BN statistics."""
        arch = self._check(arch)
        blocks = _path_blocks(self.space, arch, self.blocks(arch))
        return ChildNet(copy.deepcopy(self.stem), copy.deepcopy(blocks), copy.deepcopy(self.head))


def build_child(
    space: SearchSpace,
    arch: Sequence[int] | str,
    num_classes: int | None = None,
    in_channels: int | None = None,
    seed: int = 0,
) -> ChildNet:
    """A freshly initialised stand-alone network for ``arch`` (for training from scratch)."""
    arch = space.parse_arch(arch)
    act = space.activation
    in_channels = in_channels or space.in_channels
    choices = space.full_choices(arch)
    stem = ConvBNAct(in_channels, space.stem_channels, space.stem_kernel, space.stem_stride, act=act)
    blocks = [
        layer.choices[c].build(layer.in_channels, layer.out_channels, layer.stride, act)
        for layer, c in zip(space.layers, choices, strict=True)
    ]
    head = Head(
        space.layers[-1].out_channels, space.head_channels, num_classes or space.num_classes, space.dropout, act
    )
    child = ChildNet(stem, _path_blocks(space, arch, blocks), head)
    init_weights(child, seed)
    return child
