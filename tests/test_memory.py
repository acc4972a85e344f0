"""The single-path memory claim, traced: a per_path SF step needs the working memory of its largest child.

Uses benchmarks/bench_memory.py's tracer (torch profiler memory timeline: every allocation and
free, labelled by role) on a small space. Memory, unlike time, is deterministic, so this is a test.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import tiny_space

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_memory import traced  # noqa: E402
from common import Setup, sgd  # noqa: E402

from fairnas.models import Supernet, layout  # noqa: E402
from fairnas.samplers import StrictFairSampler  # noqa: E402


@pytest.fixture(scope="module")
def step() -> Setup:
    space = tiny_space()
    supernet = layout.to_layout(Supernet(space, seed=0), "channels_last")
    paths = StrictFairSampler(space.num_layers, space.num_choices, seed=0).sample(0)[0]
    children = [layout.to_layout(supernet.export(a), "channels_last") for a in paths]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    return Setup("tiny", supernet, paths, children, x, torch.randint(0, 4, (64,), generator=g))


def test_per_path_step_needs_the_memory_of_its_largest_child_and_fused_needs_more(step):
    largest = max(traced(partial(step.child_step, c, sgd(c.parameters())))["working"] for c in step.children)
    per_path = traced(partial(step.sf_step, sgd(step.supernet.parameters()), "per_path"))
    fused = traced(partial(step.sf_step, sgd(step.supernet.parameters()), "fused"))
    assert per_path["working"] <= 1.15 * largest
    assert fused["working"] > 1.5 * largest  # all m paths' activations alive at once: the tracer sees it
    # The supernet's persistent state is reported apart: every block's gradient and momentum exist.
    n_bytes = sum(p.numel() * p.element_size() for p in step.supernet.parameters()) / 2**20
    assert per_path["parameter"] == pytest.approx(n_bytes, rel=0.05)
    assert per_path["gradient"] == pytest.approx(n_bytes, rel=0.05)
