"""Strict fairness under 2-process CPU DDP (gloo) equals a plain single-process reference, exactly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, run_entry, tiny_space
from ddp_worker import BATCH, STEPS, dataset

from fairnas.models import Supernet
from fairnas.samplers import StrictFairSampler


def _launch(tmp_path, mode: str, step_mode: str = "per_path") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path / "out.pt"), mode],
        cwd=tmp_path,
        env={**os.environ, "STEP_MODE": step_mode},
        capture_output=True,
        text=True,
        timeout=240,
    )


def reference(init: dict, world: int) -> dict:
    """Plain PyTorch: per step, for each path, each rank's shard separately (BN sees per-rank
    batches), gradients averaged over ranks (DDP) and summed over paths, then one SGD step."""
    space = tiny_space()
    net = Supernet(space).double()
    net.load_state_dict(init)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sampler = StrictFairSampler(space.num_layers, space.num_choices, seed=0)
    x, y = dataset().tensors
    shards = [torch.arange(r, len(x), world) for r in range(world)]  # see StridedShards
    for step in range(STEPS):
        opt.zero_grad()
        for arch in sampler.sample(step)[0]:
            for shard in shards:
                idx = shard[step * BATCH : (step + 1) * BATCH]
                (F.cross_entropy(net(x[idx], arch), y[idx]) / world).backward()
        opt.step()
    return net.state_dict()


@pytest.mark.parametrize("step_mode", ["per_path", "fused"])
def test_ddp_two_processes_equal_single_process_reference(tmp_path, step_mode):
    proc = _launch(tmp_path, "same", step_mode)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["world_size"] == 2
    assert out["rounds"] == STEPS  # one gradient all-reduce per step, not one per path
    expected = reference(out["init"], 2)
    params = dict(Supernet(tiny_space()).named_parameters())
    moved = 0
    for name in params:
        torch.testing.assert_close(out["final"][name], expected[name], rtol=0, atol=1e-12, msg=name)
        moved += not torch.equal(out["final"][name], out["init"][name])
    assert moved == len(params)  # every choice block was trained: strict fairness reaches them all


def test_ddp_ranks_with_different_paths_fail_loudly(tmp_path):
    proc = _launch(tmp_path, "diverge")
    assert proc.returncode != 0
    assert "PathDivergenceError" in proc.stderr and "different paths" in proc.stderr


@pytest.mark.parametrize("sampler", ["sf"])
def test_train_py_two_process_ddp_stays_fair(tmp_path, sampler):
    proc = run_entry(
        "train.py",
        f"sampler={sampler}",
        "dataset=synthetic",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "dataset.batch_size=32",
        "trainer.max_steps=3",
        "trainer.limit_val_batches=1",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["global_step"] == 3 and results["fairness_spread"] == 0
    rows = (tmp_path / "block_usage.csv").read_text().splitlines()[1:]
    assert {int(r.split(",")[2]) for r in rows} == {3}
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
