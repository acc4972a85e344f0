"""What the benchmarks share: a space's supernet, one SF step's paths and exported children, a batch."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fairnas.models import SearchSpace, Supernet, layout  # noqa: E402
from fairnas.samplers import StrictFairSampler  # noqa: E402

# The training batch of each space's default recipe on CPU.
BATCH = {"fairnas_mini": 128, "fairnas_cifar": 64}


def load_space(name: str) -> SearchSpace:
    return instantiate(OmegaConf.load(ROOT / "conf" / "search_space" / f"{name}.yaml"))


def sgd(params) -> torch.optim.Optimizer:
    """The default recipe's optimizer (conf/optimizer/sgd.yaml), at a benchmark's learning rate."""
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=4e-5)


@dataclass
class Setup:
    """A supernet, the m paths of its first SF step, their exported children, and one batch."""

    name: str
    supernet: Supernet
    paths: list[tuple[int, ...]]
    children: list[torch.nn.Module]
    x: torch.Tensor
    y: torch.Tensor

    def child_step(self, child: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(child(self.x), self.y).backward()
        opt.step()

    def sf_step(self, opt: torch.optim.Optimizer, mode: str = "per_path") -> None:
        """The SF step as SupernetSystem runs it: per_path (a backward per path) or fused (one backward)."""
        opt.zero_grad(set_to_none=True)
        if mode == "fused":
            torch.stack([F.cross_entropy(self.supernet(self.x, a), self.y) for a in self.paths]).sum().backward()
        else:
            for arch in self.paths:
                F.cross_entropy(self.supernet(self.x, arch), self.y).backward()
        opt.step()


def setup(name: str, memory_format: str = "channels_last", batch: int | None = None, device: str = "cpu") -> Setup:
    space = load_space(name)
    supernet = layout.to_layout(Supernet(space, seed=0).to(device), memory_format)
    paths = StrictFairSampler(space.num_layers, space.num_choices, seed=0).sample(0)[0]
    children = [layout.to_layout(supernet.export(arch), memory_format) for arch in paths]
    g = torch.Generator().manual_seed(0)
    b = batch or BATCH.get(name, 64)
    x = torch.randn(b, space.in_channels, space.input_size, space.input_size, generator=g)
    y = torch.randint(0, space.num_classes, (b,), generator=g)
    return Setup(name, supernet, paths, children, layout.as_layout(x.to(device), memory_format), y.to(device))


def lightning_job(name: str, batches: int, mode: str, memory_format: str = "channels_last") -> tuple:
    """A SupernetSystem (the default recipe's SGD, clip 5) and a loader of ``batches`` random batches."""
    from functools import partial

    from torch.utils.data import DataLoader, TensorDataset

    from fairnas.system import SupernetSystem

    space = load_space(name)
    b = BATCH.get(name, 64)
    g = torch.Generator().manual_seed(0)
    n = b * batches
    data = TensorDataset(
        torch.randn(n, space.in_channels, space.input_size, space.input_size, generator=g),
        torch.randint(0, space.num_classes, (n,), generator=g),
    )
    system = SupernetSystem(
        Supernet(space, seed=0), StrictFairSampler(space.num_layers, space.num_choices, seed=0),
        optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9, nesterov=True), grad_clip=5.0,
        val_archs=1, val_bn_batches=0, step_mode=mode, memory_format=memory_format,
    )  # fmt: skip
    return system, DataLoader(data, batch_size=b)
