"""Models: search-space description, block registry, blocks, supernet, cost model."""

from fairnas.models import blocks as _builtin_blocks  # noqa: F401  # registers ir, skip and id first
from fairnas.models.cost import CostModel
from fairnas.models.registry import BlockSpec, conv_cost, register_block, registered_kinds
from fairnas.models.space import Arch, ArchitectureError, LayerSpec, SearchSpace, SearchSpaceError
from fairnas.models.supernet import ChildNet, Supernet, build_child

__all__ = [
    "Arch",
    "ArchitectureError",
    "BlockSpec",
    "ChildNet",
    "CostModel",
    "LayerSpec",
    "SearchSpace",
    "SearchSpaceError",
    "Supernet",
    "build_child",
    "conv_cost",
    "register_block",
    "registered_kinds",
]
