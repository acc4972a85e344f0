"""Building blocks: small typed modules with a flat forward."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fairnas.models.space import BlockSpec

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


def build_block(spec: BlockSpec, in_channels: int, out_channels: int, stride: int, act: str) -> nn.Module:
    """Instantiates one candidate block of the grammar in :mod:`fairnas.models.space`."""
    if spec.kind == "skip":
        return nn.Identity()
    return InvertedResidual(in_channels, out_channels, spec.kernel, stride, spec.expansion, act)


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
