"""Building blocks: small typed modules with a flat forward, and the built-in block kinds.

The block kinds (:class:`InvertedResidualBlock` ``ir_k{K}_e{E}``, :class:`SkipBlock` ``skip`` and
:class:`IdentityOrProjectionBlock` ``id``) are registered in :mod:`fairnas.models.registry`; each
owns its name grammar, its module and its exact cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fairnas.models.registry import BlockSpec, SearchSpaceError, conv_cost, register_block

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "hardswish": nn.Hardswish,
}


def activation(name: str) -> nn.Module:
    return _ACTIVATIONS[name](inplace=True)


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional activation, with 'same' padding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu6",
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if act is not None:
            layers.append(activation(act))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> kxk depthwise -> 1x1 project (linear), residual if shapes match."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int, act: str) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, act=act))
        layers.append(ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=act))
        layers.append(ConvBNAct(hidden, out_channels, 1, act=None))
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class Head(nn.Module):
    """Optional 1x1 conv, global average pooling, dropout, linear classifier."""

    def __init__(self, in_channels: int, channels: int | None, num_classes: int, dropout: float, act: str) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, channels, 1, act=act) if channels else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(channels or in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.conv(x)).flatten(1)
        return self.classifier(self.dropout(x))


class Projection(nn.Sequential):
    """1x1 conv (no bias, given stride) -> BatchNorm, no activation: a shortcut that changes shape."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )


@register_block
@dataclass(frozen=True)
class InvertedResidualBlock(BlockSpec):
    """``ir_k{K}_e{E}``: MobileNetV2 inverted residual, depthwise kernel K, expansion ratio E.

    ``E == 1`` drops the 1x1 expansion (a depthwise-separable block). A residual connection is
    added when the stride is 1 and input and output channels match.
    """

    kind = "ir"
    template = "ir_k{kernel}_e{expansion}"
    example = "ir_k3_e6"

    kernel: int
    expansion: int

    def __post_init__(self) -> None:
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise SearchSpaceError("the kernel size must be odd and positive")
        if self.expansion < 1:
            raise SearchSpaceError("the expansion ratio must be at least 1")

    def build(self, in_channels: int, out_channels: int, stride: int, act: str) -> nn.Module:
        return InvertedResidual(in_channels, out_channels, self.kernel, stride, self.expansion, act)

    def cost(self, size: int, in_channels: int, out_channels: int, stride: int) -> tuple[int, int]:
        hidden = in_channels * self.expansion
        madds = params = 0
        if self.expansion != 1:
            m, p, size = conv_cost(size, in_channels, hidden, 1, 1)
            madds, params = madds + m, params + p
        m, p, size = conv_cost(size, hidden, hidden, self.kernel, stride, groups=hidden)
        madds, params = madds + m, params + p
        m, p, size = conv_cost(size, hidden, out_channels, 1, 1)
        return madds + m, params + p

    def residual(self, in_channels: int, out_channels: int, stride: int) -> bool:
        return stride == 1 and in_channels == out_channels


@register_block
@dataclass(frozen=True)
class SkipBlock(BlockSpec):
    """``skip``: identity. Only valid where the layer keeps the shape (stride 1, same channels)."""

    kind = "skip"
    template = "skip"

    def check(self, in_channels: int, out_channels: int, stride: int) -> str | None:
        if stride != 1 or in_channels != out_channels:
            return (
                f"'skip' needs stride 1 and equal channels (here stride {stride}, {in_channels} -> "
                f"{out_channels} channels); use 'id' for an identity that projects where the shape changes"
            )
        return None

    def build(self, in_channels: int, out_channels: int, stride: int, act: str) -> nn.Module:
        return nn.Identity()

    def cost(self, size: int, in_channels: int, out_channels: int, stride: int) -> tuple[int, int]:
        return 0, 0

    def residual(self, in_channels: int, out_channels: int, stride: int) -> bool:
        return True

    def is_identity(self, in_channels: int, out_channels: int, stride: int) -> bool:
        return True


@register_block
@dataclass(frozen=True)
class IdentityOrProjectionBlock(BlockSpec):
    """``id``: identity where the layer keeps the shape; elsewhere a 1x1 conv (with the layer's stride) + BN.

    NAS-Bench-Macro's choice 0: in the first layer of each stage (stride 2, channels doubled) the
    "identity" is this projection, so even the all-identity network has a path of learned weights.
    """

    kind = "id"
    template = "id"

    def build(self, in_channels: int, out_channels: int, stride: int, act: str) -> nn.Module:
        if self.is_identity(in_channels, out_channels, stride):
            return nn.Identity()
        return Projection(in_channels, out_channels, stride)

    def cost(self, size: int, in_channels: int, out_channels: int, stride: int) -> tuple[int, int]:
        if self.is_identity(in_channels, out_channels, stride):
            return 0, 0
        madds, params, _ = conv_cost(size, in_channels, out_channels, 1, stride)
        return madds, params

    def residual(self, in_channels: int, out_channels: int, stride: int) -> bool:
        return self.is_identity(in_channels, out_channels, stride)

    def is_identity(self, in_channels: int, out_channels: int, stride: int) -> bool:
        return stride == 1 and in_channels == out_channels


def init_weights(module: nn.Module, seed: int = 0) -> None:
    """MobileNetV2 / timm initialisation: He (fan-out) convs, unit BN, small linear.

    Draws from a generator seeded with ``seed``, so the initial weights do not depend on whatever
    else consumed the global RNG before.
    """
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", generator=generator)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01, generator=generator)
            nn.init.zeros_(m.bias)
