"""2-process CPU DDP (gloo) equals a plain single-process float64 reference, exactly.

- ``train.py`` itself, as users run it (``trainer.devices=2``, a ``-m`` sweep over sf and ef), with its
  own data sharding (``EpochShuffleSampler``) and the default recipe: label smoothing, Nesterov SGD
  with weight decay, cosine with a warm-up, the default clipping acting on some updates.
- The system in a worker of its own (ddp_worker.py, one launch for every configuration): fused
  steps, grad_reduction=mean + split_batch, a skipped NaN update, and ranks that draw different
  paths."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, compose_train, run_entry, tiny_space
from ddp_worker import BATCH, CONFIGS, WORLD, dataset, default_recipe
from hydra.utils import instantiate

from fairnas.data.base import STREAM_SHUFFLE, derive_seed
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


# ---------------------------------------------------------------------------------- train.py itself
# A -m sweep over sf and ef, each job on 2 processes: 64 images, 16 a batch, so 2 batches per process
# and epoch; sf trains 3 epochs of 1 update a batch (6), ef stops at max_steps=14 (6 updates a batch:
# in the second epoch's first batch).
# float64, so that the only difference from the reference is the order of float sums; the default
# recipe with a warm-up of a quarter of the steps; grad_clip stays the default 5.0, which acts on the
# first updates (their gradient norms reach 10 to 20 on these images; the test checks it acted).
SWEEP = [
    "dataset=synthetic", "search_space.input_size=8", "dataset.num_train=64", "dataset.batch_size=16",
    "trainer.precision=64", "trainer.max_epochs=3", "trainer.max_steps=14", "scheduler.warmup_fraction=0.25",
    "system.val_archs=2", "system.val_bn_batches=1", "trainer.limit_val_batches=1",
]  # fmt: skip
STEPS = {"sf": 6, "ef": 14}


@pytest.fixture(scope="module")
def ddp_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_sweep")
    outputs = {p.name for p in (ROOT / "outputs").glob("*")} if (ROOT / "outputs").exists() else set()
    proc = run_entry(
        "train.py", "-m", "sampler=sf,ef", "trainer.accelerator=cpu", "trainer.devices=2", *SWEEP, "logger=wandb",
        f"hydra.sweep.dir={out}", timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = {p.name for p in (ROOT / "outputs").glob("*")} if (ROOT / "outputs").exists() else set()
    runs = {json.loads((r / "results.json").read_text())["sampler"]: r for r in out.iterdir() if r.is_dir()}
    return {"StrictFairSampler": "sf", "UniformSampler": "ef"}, runs, out, after == outputs


def test_a_ddp_sweep_runs_each_job_on_two_processes_in_its_own_dir(ddp_sweep):
    # The Hydra + DDP trap: Lightning restarts sys.argv for rank 1, which inside -m would rerun the
    # whole sweep in another directory; and the next job would find the last one's LOCAL_RANK.
    names, runs, out, no_stray_dirs = ddp_sweep
    assert set(runs) == set(names)
    assert sorted(p.name.split("_")[0] for p in out.iterdir() if p.is_dir()) == ["0", "1"]  # the two jobs only
    for sampler, run in runs.items():
        results = json.loads((run / "results.json").read_text())
        assert results["world_size"] == 2 and results["global_step"] == STEPS[names[sampler]]
        assert (run / "train_ddp_rank1.log").is_file()  # rank 1 ran this job, here
        # One W&B run per job, from rank 0 only (rank 1 re-runs the job's command in the same folder).
        assert len(list((run / "wandb").glob("offline-run-*"))) == 1
        with open(run / "block_usage.csv") as f:
            counts = [int(r["count"]) for r in csv.DictReader(f)]
        if names[sampler] == "sf":  # strict fairness holds under DDP too
            assert results["fairness_spread"] == 0 and set(counts) == {STEPS["sf"]}
        else:
            assert sum(counts) == STEPS["ef"] * 8  # one path per update, 8 searchable layers
    assert no_stray_dirs  # no rank wrote a run directory of its own


def train_py_reference(run: Path, sampler_name: str) -> tuple[dict, int]:
    """train.py's run re-done in one plain loop: the same images, shuffled and sharded over 2 ranks as
    documented (a permutation per epoch seeded by (seed, epoch); rank r takes every 2nd index from r;
    batches of 16 in that order), and per update: each path's loss on each rank's batch, its gradient
    divided by the world size and summed over paths; the whole gradient clipped to grad_clip; the
    cosine-with-warm-up rate; one Nesterov SGD step with weight decay on weights, not on BN and biases.
    Returns the final parameters and how many updates were clipped."""
    cfg = compose_train(run, f"sampler={sampler_name}", *SWEEP)
    space = instantiate(cfg.search_space)
    dm = instantiate(cfg.dataset)
    dm.setup("fit")
    net = Supernet(space, dm.num_classes, dm.in_channels, seed=cfg.seed).double()
    sampler = instantiate(cfg.sampler, num_layers=space.num_layers, num_choices=space.num_choices)
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    o, sched = cfg.optimizer, cfg.scheduler
    opt = torch.optim.SGD([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=o.lr,
                          momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)  # fmt: skip
    clip, smoothing, batch = cfg.system.grad_clip, cfg.system.label_smoothing, cfg.dataset.batch_size
    n = len(dm.train_dataset)
    per_epoch = n // WORLD // batch
    total, updates, clipped, step = STEPS[sampler_name], 0, 0, 0
    while updates < total:
        epoch, b = divmod(step, per_epoch)
        order = torch.randperm(
            n, generator=torch.Generator().manual_seed(derive_seed(cfg.dataset.seed, STREAM_SHUFFLE, epoch))
        )
        shards = [order[r::WORLD][b * batch : (b + 1) * batch].tolist() for r in range(WORLD)]
        rank_batches = [dm.train_dataset.__getitems__(idx) for idx in shards]
        for group in sampler.sample(updates):
            if updates == total:
                break
            opt.zero_grad(set_to_none=True)
            for arch in group:
                for x, y in rank_batches:
                    loss = F.cross_entropy(net(x.double(), arch), y, label_smoothing=smoothing)
                    (loss / WORLD).backward()
            grads = [p.grad for p in net.parameters() if p.grad is not None]
            norm = torch.sqrt(sum((g * g).sum() for g in grads))
            if norm > clip:
                clipped += 1
                for g in grads:
                    g.mul_(clip / (norm + 1e-6))
            for pg in opt.param_groups:
                pg["lr"] = o.lr * lr_factor(updates, total, sched.warmup_fraction, sched.min_lr_ratio)
            opt.step()
            updates += 1
        step += 1
    return {k: v for k, v in net.named_parameters()}, clipped


@pytest.mark.parametrize("sampler", ["sf", "ef"])
def test_train_py_on_two_processes_trains_what_one_plain_loop_over_the_same_shards_trains(ddp_sweep, sampler):
    names, runs, _, _ = ddp_sweep
    run = next(r for s, r in runs.items() if names[s] == sampler)
    expected, clipped = train_py_reference(run, sampler)
    # The default grad_clip=5.0 acts: on every sf update here (6 paths' gradients summed), on all ef updates
    # but the first two (their norms are 2.4 and 4.7).
    assert clipped == (STEPS[sampler] if sampler == "sf" else STEPS[sampler] - 2)
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == STEPS[sampler]
    state = saved["state_dict"]
    for name, param in expected.items():
        got = state[f"supernet.{name}"]
        assert got.dtype == torch.float64
        # Float sums in another order (DDP's all-reduce, channels_last convolutions) move these weights by
        # about 1e-11 after the clipped, BN-normalised updates (the reference's own rank order reversed: 4e-12);
        # a wrong batch, rate or clip moves them by more than 1e-4.
        torch.testing.assert_close(got, param.detach(), rtol=0, atol=1e-9, msg=f"{sampler}: {name} differs")
