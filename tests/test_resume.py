"""Exact resume: a run resumed from any checkpoint ends bit-identical to the run that was never stopped.

On CPU with a fixed seed: weights, BN statistics, block-usage counts, optimizer (momentum) and
scheduler state, global step and the final metrics. Covers an end-of-epoch checkpoint, a
mid-epoch step checkpoint (the data order must continue where it stopped), augmentation and
dropout (their random streams must continue too), and a run killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_entry

# 4 steps per epoch, 2 epochs; augmentation and dropout on, so their random streams matter.
COMMON = [
    "dataset=synthetic",
    "dataset.num_train=256",
    "dataset.batch_size=64",
    "dataset.augment=crop_flip",
    "search_space.head.dropout=0.2",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "system.val_archs=2",
    "system.val_bn_batches=1",
    "logger=none",
]

EVERY_STEP = ["callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.save_top_k=-1"]


def ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: Path, b: Path) -> None:
    """Two training checkpoints hold the same training state, bit for bit."""
    x, y = ckpt(a), ckpt(b)
    assert x["global_step"] == y["global_step"]
    assert x["state_dict"].keys() == y["state_dict"].keys()
    for key in x["state_dict"]:
        assert torch.equal(x["state_dict"][key], y["state_dict"][key]), key
    for ox, oy in zip(x["optimizer_states"], y["optimizer_states"], strict=True):
        for (px, sx), (py, sy) in zip(ox["state"].items(), oy["state"].items(), strict=True):
            assert px == py and torch.equal(sx["momentum_buffer"], sy["momentum_buffer"]), px
    assert x["lr_schedulers"] == y["lr_schedulers"]


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def same_metrics(a: Path, b: Path) -> None:
    ra, rb = results(a), results(b)
    for key in ("val/acc_mean", "val/acc_min", "val/loss_mean", "train/loss", "global_step", "fairness_spread"):
        assert ra[key] == rb[key], key


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run, keeping a checkpoint after every step."""
    run = tmp_path_factory.mktemp("straight")
    proc = run_entry("train.py", *COMMON, *EVERY_STEP, f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert results(run)["global_step"] == 8
    return run


@pytest.mark.parametrize(
    "step",
    [
        pytest.param(4, id="end-of-epoch"),
        pytest.param(3, id="mid-epoch"),
    ],
)
def test_a_resumed_run_ends_identical_to_the_uninterrupted_one(straight: Path, tmp_path: Path, step: int):
    start = straight / "checkpoints" / f"step{step}.ckpt"
    assert ckpt(start)["global_step"] == step
    proc = run_entry("train.py", *COMMON, *EVERY_STEP, f"ckpt_path={start}", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not resumable" not in proc.stderr  # Lightning's mid-epoch warning: our data order resumes
    for later in range(step + 1, 9):  # every step after the resume, not only the last
        assert_same_state(
            straight / "checkpoints" / f"step{later}.ckpt", tmp_path / "checkpoints" / f"step{later}.ckpt"
        )
    same_metrics(straight, tmp_path)


def test_a_run_killed_with_sigkill_resumes_from_its_periodic_checkpoint(tmp_path: Path):
    common = [*COMMON, "dataset.num_train=1024", "callbacks.model_checkpoint.every_n_train_steps=5"]
    straight = tmp_path / "straight"
    assert run_entry("train.py", *common, f"hydra.run.dir={straight}").returncode == 0  # 32 steps
    run = tmp_path / "killed"
    last = run / "checkpoints" / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *common, f"hydra.run.dir={run}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 600
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert last.exists(), "no periodic checkpoint within 10 minutes"
    saved = ckpt(last)  # whatever instant the kill hit, last.ckpt is whole (written to a temp file, then moved)
    assert 5 <= saved["global_step"] < 32, "the kill should land mid-run"
    assert not (run / "results.json").exists()
    resumed = run_entry("train.py", *common, f"ckpt_path={last}", f"hydra.run.dir={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_state(straight / "checkpoints" / "last.ckpt", last)
    same_metrics(straight, run)


def test_ckpt_path_last_starts_fresh_then_resumes_the_same_run_directory(tmp_path: Path):
    common = ["dataset=synthetic", "dataset.batch_size=64", "trainer.limit_val_batches=1", "logger=none",
              "trainer.max_epochs=3", "ckpt_path=last", f"hydra.run.dir={tmp_path}"]  # fmt: skip
    first = run_entry("train.py", *common, "trainer.max_steps=4")  # nothing to resume: a fresh start
    assert first.returncode == 0, first.stderr[-3000:]
    assert results(tmp_path)["global_step"] == 4
    again = run_entry("train.py", *common, "trainer.max_steps=6")  # what a requeued job does
    assert again.returncode == 0, again.stderr[-3000:]
    assert results(tmp_path)["global_step"] == 6
    assert "resuming from" in (tmp_path / "train.log").read_text()
