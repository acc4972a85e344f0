"""Exact cost model: multiply-adds and parameters of any architecture, without running it.

Conventions (those of the FairNAS / MobileNet papers): MAdds count the multiply-accumulates of
convolutions and of the final linear layer (no BN, activation, pooling or residual add); params
count conv weights (no bias), BN affine parameters (2 per channel) and the linear weight and bias.
Each block kind computes its own exact cost (:meth:`fairnas.models.registry.BlockSpec.cost`).
Because every layer's resolution is fixed by the space (its stride does not depend on the
choice), the cost of an architecture is a fixed part plus one table entry per searchable layer,
so evaluating the cost of millions of candidates is cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fairnas.models.registry import conv_cost
from fairnas.models.space import SearchSpace


def _out_size(size: int, stride: int) -> int:
    """Output size of an odd-kernel convolution with 'same' padding (k // 2): independent of k."""
    return (size - 1) // stride + 1


@dataclass(frozen=True)
class CostModel:
    """Per-layer cost tables of a space at one input size and class count.

    Args:
        space: The search space.
        input_size: Input resolution (default: the space's nominal one).
        num_classes: Classes (default: the space's nominal number).
        in_channels: Input channels (default: the space's nominal number).
    """

    fixed_madds: int
    fixed_params: int
    madds_table: tuple[tuple[int, ...], ...]
    params_table: tuple[tuple[int, ...], ...]

    @classmethod
    def create(
        cls,
        space: SearchSpace,
        input_size: int | None = None,
        num_classes: int | None = None,
        in_channels: int | None = None,
    ) -> CostModel:
        size = input_size or space.input_size
        madds, params, size = conv_cost(
            size, in_channels or space.in_channels, space.stem_channels, space.stem_kernel, space.stem_stride
        )
        madds_table, params_table = [], []
        for layer in space.layers:
            costs = [c.cost(size, layer.in_channels, layer.out_channels, layer.stride) for c in layer.choices]
            if layer.searchable:
                madds_table.append(tuple(c[0] for c in costs))
                params_table.append(tuple(c[1] for c in costs))
            else:
                madds, params = madds + costs[0][0], params + costs[0][1]
            size = _out_size(size, layer.stride)
        channels = space.layers[-1].out_channels
        if space.head_channels:
            m, p, size = conv_cost(size, channels, space.head_channels, 1, 1)
            madds, params, channels = madds + m, params + p, space.head_channels
        classes = num_classes or space.num_classes
        madds += channels * classes
        params += channels * classes + classes
        return cls(madds, params, tuple(madds_table), tuple(params_table))

    def madds(self, arch: Sequence[int]) -> int:
        return self.fixed_madds + sum(row[c] for row, c in zip(self.madds_table, arch, strict=True))

    def params(self, arch: Sequence[int]) -> int:
        return self.fixed_params + sum(row[c] for row, c in zip(self.params_table, arch, strict=True))

    def range_madds(self) -> tuple[int, int]:
        """Smallest and largest MAdds over the whole space."""
        return (
            self.fixed_madds + sum(min(r) for r in self.madds_table),
            self.fixed_madds + sum(max(r) for r in self.madds_table),
        )
