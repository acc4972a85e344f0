"""2-process CPU DDP (gloo) equals a plain single-process float64 reference, exactly, under the
default recipe (label smoothing, clipping with the shared norm, Nesterov SGD with weight decay,
cosine schedule), for sf and ef, with grad_reduction=mean + split_batch, and when a NaN update is
skipped. One worker launch trains every configuration (see ddp_worker.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, run_entry, tiny_space
from ddp_worker import BATCH, CONFIGS, WORLD, dataset, default_recipe

from fairnas.models import Supernet
from fairnas.samplers import StrictFairSampler, UniformSampler

COMPARED = [name for name in CONFIGS if name != "diverge"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One launch: every configuration in turn, then ``diverge``, which must fail."""
    out = tmp_path_factory.mktemp("ddp")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ddp_worker.py"), str(out), *COMPARED, "diverge"],
        cwd=out,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=400,
    )
    return out, proc


def recipe(clip: float) -> dict:
    """The default recipe as train.py's configs state it (read here, applied by hand below)."""
    cfg = default_recipe()
    opt, sched = cfg.optimizer, cfg.scheduler
    assert opt._target_ == "torch.optim.SGD" and sched._target_ == "fairnas.system.cosine_with_warmup"
    assert not cfg.system.weight_decay_bn_bias
    return {
        "lr": opt.lr, "momentum": opt.momentum, "nesterov": opt.nesterov, "weight_decay": opt.weight_decay,
        "label_smoothing": cfg.system.label_smoothing, "warmup_fraction": sched.warmup_fraction,
        "min_lr_ratio": sched.min_lr_ratio, "clip": clip,
    }  # fmt: skip


def lr_factor(update: int, total: int, warmup_fraction: float, min_lr_ratio: float) -> float:
    warmup = round(warmup_fraction * total)
    if update < warmup:
        return (update + 1) / warmup
    progress = (update - warmup) / max(1, total - warmup)
    return min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * progress)) / 2


def reference(init: dict, config: dict) -> tuple[dict, dict]:
    """Plain PyTorch, one process. Per update group: for each path and each rank's batch (BN sees
    per-rank batches), the loss's gradient divided by the world size (DDP averages over ranks) and
    summed over paths (or averaged: grad_reduction=mean; split_batch: path k gets chunk k of each
    rank's batch); a NaN/inf gradient norm drops the update (the step counter does not move, so the
    next batch draws the same paths); else clip the whole gradient to the norm, set the cosine LR,
    step. Returns the final state and what happened (updates, skipped, clipped)."""
    space = tiny_space()
    net = Supernet(space).double()
    net.load_state_dict(init)
    r = recipe(config["clip"]) if "clip" in config else None
    if r is None:
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        smoothing, clip = 0.0, None
    else:
        decay = [p for p in net.parameters() if p.ndim > 1]
        no_decay = [p for p in net.parameters() if p.ndim <= 1]  # BN affine parameters and biases
        opt = torch.optim.SGD(
            [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=r["lr"], momentum=r["momentum"], nesterov=r["nesterov"], weight_decay=r["weight_decay"],
        )  # fmt: skip
        smoothing, clip = r["label_smoothing"], r["clip"]
    sampler_cls = {"sf": StrictFairSampler, "ef": UniformSampler}[config["sampler"]]
    sampler = sampler_cls(space.num_layers, space.num_choices, seed=0)
    x, y = dataset(config.get("poison")).tensors
    shards = [torch.arange(rank, len(x), WORLD) for rank in range(WORLD)]  # see StridedShards
    per_epoch = len(shards[0]) // BATCH
    mean, split = config.get("grad_reduction") == "mean", config.get("split_batch", False)
    total, updates, seen = config["steps"], 0, {"skipped": 0, "clipped": 0, "batches": 0}
    batch = 0
    while updates < total:
        pos = batch % per_epoch
        rank_batches = [(x[s[pos * BATCH : (pos + 1) * BATCH]], y[s[pos * BATCH : (pos + 1) * BATCH]]) for s in shards]
        for group in sampler.sample(updates):  # drawn once, at the start of the batch
            if updates == total:
                break
            opt.zero_grad(set_to_none=True)
            for k, arch in enumerate(group):
                for xr, yr in rank_batches:
                    if split:
                        xr, yr = xr.tensor_split(len(group))[k], yr.tensor_split(len(group))[k]
                    loss = F.cross_entropy(net(xr, arch), yr, label_smoothing=smoothing)
                    (loss / (len(group) if mean else 1) / WORLD).backward()
            grads = [p.grad for p in net.parameters() if p.grad is not None]
            norm = torch.sqrt(sum((g * g).sum() for g in grads))
            if not torch.isfinite(norm):
                seen["skipped"] += 1
                continue
            if clip is not None and norm > clip:
                seen["clipped"] += 1
                for g in grads:
                    g.mul_(clip / (norm + 1e-6))
            if r is not None:
                for pg in opt.param_groups:
                    pg["lr"] = r["lr"] * lr_factor(updates, total, r["warmup_fraction"], r["min_lr_ratio"])
            opt.step()
            updates += 1
        batch += 1
    seen["batches"] = batch
    return net.state_dict(), seen


def test_ddp_launch_ran_every_configuration(ddp_run):
    out, proc = ddp_run
    missing = [f"{n}.rank{r}" for n in COMPARED for r in range(WORLD) if not (out / f"{n}.rank{r}.pt").exists()]
    assert not missing, proc.stderr[-3000:]


@pytest.mark.parametrize("name", COMPARED)
def test_ddp_two_processes_equal_single_process_reference(ddp_run, name):
    out, proc = ddp_run
    config = CONFIGS[name]
    ranks = [torch.load(out / f"{name}.rank{r}.pt", weights_only=True) for r in range(WORLD)]
    expected, seen = reference(ranks[0]["init"], config)
    if "clip" in config:
        assert 0 < seen["clipped"] < config["steps"]  # the clip acted on some updates, not on all
    if config.get("poison"):
        assert seen["skipped"] == 1 and seen["batches"] == config["steps"] + 1
    params = [n for n, _ in Supernet(tiny_space()).named_parameters()]
    for rank, got in enumerate(ranks):
        assert got["world_size"] == WORLD
        assert got["global_step"] == config["steps"]
        assert got["nonfinite_steps"] == seen["skipped"]  # every rank skipped the same update
        # One gradient all-reduce per update group (sf: one per step, not one per path; ef: one
        # per path), also for the skipped one.
        assert got["rounds"] == config["steps"] + seen["skipped"]
        moved = 0
        for n in params:
            torch.testing.assert_close(got["final"][n], expected[n], rtol=0, atol=1e-12, msg=f"rank {rank}: {n}")
            moved += not torch.equal(got["final"][n], got["init"][n])
        if config["sampler"] == "sf":
            assert moved == len(params)  # every choice block was trained: strict fairness reaches them all


def test_ddp_ranks_with_different_paths_fail_loudly(ddp_run):
    out, proc = ddp_run
    assert proc.returncode != 0
    assert "PathDivergenceError" in proc.stderr and "different paths" in proc.stderr
    assert not list(out.glob("diverge.*"))


@pytest.mark.slow  # the same DDP run through train.py as test_train.py's multirun DDP test, which runs in CI
@pytest.mark.parametrize("sampler", ["sf", "ef"])
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
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["global_step"] == 3 and results["world_size"] == 2
    counts = [int(r.split(",")[2]) for r in (tmp_path / "block_usage.csv").read_text().splitlines()[1:]]
    if sampler == "sf":
        assert results["fairness_spread"] == 0 and set(counts) == {3}
    else:
        assert sum(counts) == 3 * 8  # one path of 8 layers per optimizer step
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
