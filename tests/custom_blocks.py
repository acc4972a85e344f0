"""A block kind defined outside the fairnas package, as a user would write one (used by test_registry.py)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fairnas.models import BlockSpec, conv_cost, register_block


@register_block
@dataclass(frozen=True)
class PlainConvBlock(BlockSpec):
    """``conv_k{K}_g{G}``: a K x K conv with G groups (no bias), BN and the activation; no residual."""

    kind = "plain_conv"
    template = "conv_k{kernel}_g{groups}"
    example = "conv_k3_g1"

    kernel: int
    groups: int

    def build(self, in_channels: int, out_channels: int, stride: int, act: str) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, self.kernel, stride, self.kernel // 2, groups=self.groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def cost(self, size: int, in_channels: int, out_channels: int, stride: int) -> tuple[int, int]:
        madds, params, _ = conv_cost(size, in_channels, out_channels, self.kernel, stride, self.groups)
        return madds, params
