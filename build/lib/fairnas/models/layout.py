"""Memory layout of the networks' 4-D weights and activations.

``channels_last`` (NHWC) is the default: on CPU it makes a training step of the mini and CIFAR
spaces 1.5x to 2.1x faster than NCHW (benchmarks/README.md, section 6), because oneDNN's
depthwise and 1x1 convolutions run natively in NHWC. On CUDA, NHWC is the layout cuDNN's
tensor-core convolutions prefer under bf16/fp16, but fp32 depthwise convolutions can be slower in
it; this project has not measured a GPU, so measure (benchmarks/bench_options.py) before a long GPU
run. ``contiguous`` (NCHW) gives PyTorch's default kernels. The two give the same results up to
float rounding (about 1e-6 in a forward pass), so whole float32 runs drift apart as with any
change of kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fairnas.errors import ConfigError

MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def memory_format(name: str) -> torch.memory_format:
    """The torch memory format called ``name`` (``channels_last`` or ``contiguous``)."""
    try:
        return MEMORY_FORMATS[name]
    except KeyError:
        raise ConfigError(f"memory_format must be one of {sorted(MEMORY_FORMATS)}, got {name!r}") from None


def to_layout(module: nn.Module, name: str) -> nn.Module:
    """Puts ``module``'s 4-D parameters and buffers in the memory format ``name`` (in place)."""
    return module.to(memory_format=memory_format(name))


def as_layout(x: Tensor, name: str) -> Tensor:
    """``x`` in the memory format ``name`` when it is a batch of images (4-D); otherwise unchanged."""
    return x.contiguous(memory_format=memory_format(name)) if x.dim() == 4 else x
