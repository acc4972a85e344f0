"""Supernet paths, export to stand-alone networks, and the exact cost model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_space, tiny_space
from torch.utils.flop_counter import FlopCounterMode

from fairnas.models import ArchitectureError, CostModel, Supernet, build_child


def random_archs(space, n, seed=0):
    rng = np.random.default_rng(seed)
    return [tuple(int(c) for c in row) for row in rng.integers(0, space.num_choices, (n, space.num_layers))]


@pytest.mark.parametrize("name", ["fairnas_mini", "fairnas_cifar", "tiny"])
def test_export_equals_supernet_path(name):
    space = tiny_space() if name == "tiny" else load_space(name)
    torch.manual_seed(0)
    net = Supernet(space)
    # A few training steps so BN statistics are not at their initial values.
    x = torch.randn(4, space.in_channels, space.input_size, space.input_size)
    for arch in random_archs(space, 3, seed=1):
        net(x, arch).sum().backward()
    net.eval()
    for arch in random_archs(space, 4):
        child = net.export(arch).eval()
        torch.testing.assert_close(child(x), net(x, arch), rtol=0, atol=0)
        # The export holds only the chosen blocks.
        assert sum(p.numel() for p in child.parameters()) == CostModel.create(space).params(arch)


@pytest.mark.parametrize(("name", "size"), [("fairnas_imagenet", 224), ("fairnas_cifar", 32), ("fairnas_mini", 28)])
def test_cost_model_matches_flop_counter(name, size):
    space = load_space(name)
    cost = CostModel.create(space)
    archs = random_archs(space, 2) + list(space.archs.values())[:2]
    for arch in archs:
        child = build_child(space, arch).eval()
        x = torch.randn(1, space.in_channels, size, size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            child(x)
        assert counter.get_total_flops() == 2 * cost.madds(arch)
        assert sum(p.numel() for p in child.parameters()) == cost.params(arch)


def test_cost_model_follows_input_size_and_classes():
    space = load_space("fairnas_imagenet")
    arch = space.archs["fairnas_a"]
    small = CostModel.create(space, input_size=112, num_classes=10)
    child = build_child(space, arch, num_classes=10)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        child(torch.randn(1, 3, 112, 112))
    assert counter.get_total_flops() == 2 * small.madds(arch)
    assert sum(p.numel() for p in child.parameters()) == small.params(arch)


def test_every_choice_block_gets_a_gradient_only_when_on_the_path(tiny):
    net = Supernet(tiny)
    x = torch.randn(2, 3, 8, 8)
    net(x, (0, 1, 0)).sum().backward()
    used = {
        tuple(int(i) for i in name.split(".")[1:3])
        for name, p in net.named_parameters()
        if name.startswith("layers.") and p.grad is not None
    }
    # (layer, choice): searchable layers 0, 1 and 3 take choices 0, 1, 0; layer 2 is the fixed block.
    assert used == {(0, 0), (1, 1), (2, 0), (3, 0)}
    assert net.layers[0][1].conv[0][0].weight.grad is None


def test_forward_rejects_invalid_paths(tiny):
    net = Supernet(tiny)
    with pytest.raises(ArchitectureError, match="layer 2: choice 7 is out of range"):
        net(torch.randn(1, 3, 8, 8), (0, 0, 7))
    with pytest.raises(ArchitectureError, match="has 2 entries"):
        net(torch.randn(1, 3, 8, 8), (0, 0))


def test_child_and_supernet_adapt_to_data_shape():
    space = load_space("fairnas_mini")
    net = Supernet(space, num_classes=100, in_channels=3)
    assert net(torch.randn(2, 3, 32, 32), (1,) * space.num_layers).shape == (2, 100)
    child = build_child(space, "largest", num_classes=7, in_channels=3)
    assert child(torch.randn(2, 3, 28, 28)).shape == (2, 7)
