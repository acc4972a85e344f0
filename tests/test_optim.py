"""Optimizer groups and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_space

from fairnas.models import Supernet
from fairnas.system import cosine_with_warmup, param_groups


def test_no_weight_decay_on_bn_and_bias_unless_asked():
    net = Supernet(tiny_space())
    decay, no_decay = param_groups(net, weight_decay_bn_bias=False)
    assert no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))
    (everything,) = param_groups(net, weight_decay_bn_bias=True)
    opt = torch.optim.SGD(param_groups(net, False), lr=0.1, weight_decay=1e-4)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    assert len(everything["params"]) == len(list(net.parameters()))


@pytest.mark.parametrize(("warmup", "floor"), [(0.0, 0.0), (0.1, 0.0), (0.2, 0.05)])
def test_cosine_with_warmup(warmup, floor):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_with_warmup(opt, total_steps=100, warmup_fraction=warmup, min_lr_ratio=floor)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    n = int(round(warmup * 100))
    if n:
        assert lrs[0] == pytest.approx(1 / n) and lrs[n - 1] == pytest.approx(1.0)
    assert lrs[n] == pytest.approx(1.0)
    assert lrs[n + (100 - n) // 2] == pytest.approx(
        floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * ((100 - n) // 2) / (100 - n)))
    )
    assert opt.param_groups[0]["lr"] == pytest.approx(floor)
    assert all(a >= b - 1e-12 for a, b in zip(lrs[n:], lrs[n + 1 :]))
