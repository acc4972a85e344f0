"""Models: search-space description, blocks, supernet, cost model."""

from fairnas.models.cost import CostModel
from fairnas.models.space import Arch, ArchitectureError, BlockSpec, LayerSpec, SearchSpace, SearchSpaceError
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
]
