"""Exact resume: a run resumed from any checkpoint ends bit-identical to the run that was never stopped.

On CPU with a fixed seed: weights, BN statistics, block-usage counts, optimizer (momentum) and
scheduler state, global step and the final metrics. Covers every kind of checkpoint (end of epoch,
end of training, a max_steps stop, a step checkpoint, SIGTERM, Ctrl+C, a SLURM hpc checkpoint, SIGKILL),
with and without trainer.limit_train_batches, supernet and stand-alone runs, augmentation and
dropout (their random streams must continue too).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    COMMON,
    Preempted,
    assert_same_state,
    assert_same_training,
    ckpt,
    compose_train,
    results,
    run_entry,
    start_entry,
)

from fairnas.cli import train
from fairnas.errors import CheckpointError, ConfigError
from fairnas.run.resume import find_resume_point

EVERY_STEP = ["callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.save_top_k=-1"]


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
    # the resumed run continues the data where the checkpoint stopped (4 batches an epoch)
    where = f"epoch {step // 4} after batch {step % 4}" if step % 4 else f"the start of epoch {step // 4}"
    assert f"resuming at step {step}: {where}" in (tmp_path / "train.log").read_text()
    for later in range(step + 1, 9):  # every step after the resume, not only the last
        assert_same_state(
            straight / "checkpoints" / f"step{later}.ckpt", tmp_path / "checkpoints" / f"step{later}.ckpt"
        )
    same_metrics(straight, tmp_path)


def test_a_run_killed_with_sigkill_resumes_from_its_periodic_checkpoint(tmp_path: Path):
    common = [*COMMON, "dataset.num_train=512", "callbacks.model_checkpoint.every_n_train_steps=5"]
    straight = tmp_path / "straight"
    assert run_entry("train.py", *common, f"hydra.run.dir={straight}").returncode == 0  # 16 steps
    run = tmp_path / "killed"
    last = run / "checkpoints" / "last.ckpt"
    proc = start_entry("train.py", *common, f"hydra.run.dir={run}")
    deadline = time.time() + 600
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert last.exists(), "no periodic checkpoint within 10 minutes"
    saved = ckpt(last)  # whatever instant the kill hit, last.ckpt is whole (written to a temp file, then moved)
    assert 5 <= saved["global_step"] < 16, "the kill should land mid-run"
    assert not (run / "results.json").exists()
    resumed = run_entry("train.py", *common, f"ckpt_path={last}", f"hydra.run.dir={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_state(straight / "checkpoints" / "last.ckpt", last)
    same_metrics(straight, run)


def test_ctrl_c_in_a_terminal_saves_the_run_and_exits_130(tmp_path: Path):
    # What a terminal does on Ctrl+C: SIGINT to every process of the foreground group (the loader workers too).
    args = ["dataset=synthetic", "dataset.batch_size=16", "dataset.num_train=4096", "search_space.input_size=8",
            "dataset.num_workers=2", "trainer.limit_val_batches=1", "logger=none", "trainer.enable_progress_bar=false",
            "callbacks.model_checkpoint.every_n_train_steps=2", "trainer.max_steps=100000",
            f"hydra.run.dir={tmp_path}"]  # fmt: skip
    proc = start_entry("train.py", *args, merge=True, new_session=True, foreground=True)
    last = tmp_path / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run should be training"
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, out[-3000:]
    assert "Traceback" not in out and "state saved to" in out, out[-3000:]
    assert ckpt(last)["global_step"] >= 2 and not (tmp_path / "results.json").exists()


def test_ckpt_path_last_starts_fresh_then_resumes_the_same_run_directory(tmp_path: Path):
    common = ["dataset=synthetic", "search_space.input_size=8", "dataset.batch_size=64", "trainer.limit_val_batches=1",
              "logger=none", "trainer.max_epochs=3", "ckpt_path=last", f"hydra.run.dir={tmp_path}"]  # fmt: skip
    first = run_entry("train.py", *common, "trainer.max_steps=4")  # nothing to resume: a fresh start
    assert first.returncode == 0, first.stderr[-3000:]
    assert results(tmp_path)["global_step"] == 4
    again = run_entry("train.py", *common, "trainer.max_steps=6")  # what a requeued job does
    assert again.returncode == 0, again.stderr[-3000:]
    assert results(tmp_path)["global_step"] == 6
    assert "resuming from" in (tmp_path / "train.log").read_text()


# In-process runs on tiny data (8x8 images, 4 batches of 64 an epoch, 2 epochs), one per kind of
# checkpoint. A constant learning rate: the schedule must not depend on how long each piece runs.
SMALL = [
    "dataset=synthetic", "dataset.num_train=256", "dataset.num_val=64", "dataset.batch_size=64",
    "search_space.input_size=8", "dataset.augment=crop_flip", "search_space.head.dropout=0.2",
    "scheduler.min_lr_ratio=1.0", "trainer.max_epochs=2", "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "system.val_archs=1", "system.val_bn_batches=1", "logger=none",
]  # fmt: skip

# name: (overrides, batches an epoch, every_n_train_steps landing mid-epoch and never on an epoch end)
LIMITS = {"full-epochs": ([], 4, 3), "limit_train_batches=3": (["trainer.limit_train_batches=3"], 3, 2)}
KINDS = ["end-of-epoch", "end-of-training", "older-end-of-training", "max_steps", "step", "sigterm", "sigint", "hpc"]


def fit(run: Path, *overrides: str) -> dict:
    return train.train(compose_train(run, *SMALL, *overrides))


def step_checkpoints(folder: Path | str, every: int) -> list[str]:
    """Overrides adding a second ModelCheckpoint, saving to ``folder`` after every ``every`` training steps
    (``*step=<n>.ckpt``); the default one keeps writing last.ckpt at the end."""
    steps = "+callbacks.steps."
    return [f"{steps}_target_=pytorch_lightning.callbacks.ModelCheckpoint", f"{steps}dirpath={folder}",
            f"{steps}every_n_train_steps={every}", f"{steps}save_top_k=-1"]  # fmt: skip


@pytest.fixture(scope="module", params=list(LIMITS))
def reference(request, tmp_path_factory) -> dict:
    """The uninterrupted run; it also keeps an end-of-epoch and a mid-epoch step checkpoint."""
    overrides, per_epoch, every = LIMITS[request.param]
    run = tmp_path_factory.mktemp("reference")
    fit(run, *overrides, "callbacks.model_checkpoint.save_top_k=-1", *step_checkpoints(run / "steps", every))
    assert results(run)["global_step"] == 2 * per_epoch
    return {"run": run, "overrides": overrides, "per_epoch": per_epoch, "every": every}


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_continued_from_any_kind_of_checkpoint_is_the_uninterrupted_run(reference: dict, kind: str, tmp_path):
    ref, overrides = reference["run"], reference["overrides"]
    first, continued = tmp_path / "first", tmp_path / "continued"
    if kind == "end-of-epoch":  # ModelCheckpoint at the end of epoch 0 (after its validation)
        start = ref / "checkpoints" / f"step{reference['per_epoch']}.ckpt"
    elif kind == "step":  # every_n_train_steps, mid-epoch
        start = next((ref / "steps").glob(f"*step={reference['every']}.ckpt"))
    elif kind.endswith("end-of-training"):  # the default last.ckpt of a run of max_epochs=1
        fit(first, *overrides, "trainer.max_epochs=1")
        start = first / "checkpoints" / "last.ckpt"
        if kind.startswith("older"):  # the data position fairnas wrote there before it was derived from the loop
            saved = ckpt(start)
            saved["SyntheticDataModule"] = {"epoch": 1, "batches": reference["per_epoch"]}
            torch.save(saved, start)
    elif kind == "max_steps":  # stopped mid-epoch by max_steps, extended in its own directory
        fit(first, *overrides, "trainer.max_steps=2")
        start, continued = "last", first
    elif kind == "sigterm":  # SaveOnInterrupt's last.ckpt, mid-epoch
        with pytest.raises(SystemExit) as stop:
            fit(first, *overrides, "+callbacks.sigterm._target_=conftest.SigtermAt", "+callbacks.sigterm.step=2")
        assert stop.value.code == 128 + signal.SIGTERM
        start = first / "checkpoints" / "last.ckpt"
    elif kind == "sigint":  # Ctrl+C halfway through step 2's update: the run finishes step 2, saves, exits 130
        # Python's own Ctrl+C handler, as in a terminal (pytest started from a background job inherits SIG_IGN)
        before = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with pytest.raises(SystemExit) as stop:
                fit(first, *overrides, "+callbacks.sigint._target_=conftest.SigintAt", "+callbacks.sigint.step=2")
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl+C is plain again after fit
        finally:
            signal.signal(signal.SIGINT, before)
        assert stop.value.code == 128 + signal.SIGINT
        start = first / "checkpoints" / "last.ckpt"
        assert ckpt(start)["global_step"] == 2
    else:  # a SLURM pre-emption: hpc_ckpt_1.ckpt at step 2, newer than last.ckpt of step 1
        with pytest.raises(Preempted):
            fit(first, *overrides, "callbacks.model_checkpoint.every_n_train_steps=1",
                "+callbacks.preempt._target_=conftest.PreemptedAt", "+callbacks.preempt.step=2")  # fmt: skip
        assert ckpt(first / "checkpoints" / "last.ckpt")["global_step"] == 1
        assert find_resume_point("last", first).path == str(first / "hpc_ckpt_1.ckpt")
        start, continued = "last", first
    # continued as a requeued job or an extension would be: to the same total step count (2 epochs)
    done = fit(continued, *overrides, f"ckpt_path='{start}'", f"trainer.max_steps={2 * reference['per_epoch']}")
    assert done["global_step"] == 2 * reference["per_epoch"] and "train/loss" in results(continued)
    assert_same_training(ref / "checkpoints" / "last.ckpt", continued / "checkpoints" / "last.ckpt")


def test_a_run_started_with_ctrl_c_ignored_keeps_ignoring_it(tmp_path):
    # What a script's background job (python train.py &) inherits, so that Ctrl+C stops only the foreground.
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        done = fit(tmp_path, "trainer.max_steps=3", "+callbacks.sigint._target_=conftest.SigintAt",
                   "+callbacks.sigint.step=2")  # fmt: skip
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
    assert done["global_step"] == 3


@pytest.mark.parametrize("reference", ["full-epochs"], indirect=True)
def test_a_run_with_loader_workers_resumes_exactly_and_trains_as_without_them(reference: dict, tmp_path):
    # Two worker processes; a step checkpoint in the middle of epoch 1 (after its batch 2 of 4), so the
    # workers' first indices must already come from epoch 1's order, the trained ones skipped.
    workers, at = "dataset.num_workers=2", reference["per_epoch"] + 2
    straight, continued = tmp_path / "straight", tmp_path / "continued"
    fit(straight, workers, *step_checkpoints(straight / "steps", at))
    start = next((straight / "steps").glob(f"*step={at}.ckpt"))
    assert ckpt(start)["global_step"] == at
    fit(continued, workers, f"ckpt_path='{start}'", f"trainer.max_steps={2 * reference['per_epoch']}")
    last = Path("checkpoints") / "last.ckpt"
    assert_same_training(straight / last, continued / last)
    # the data order, augmentation and dropout do not depend on the number of workers
    assert_same_training(reference["run"] / last, straight / last)


def test_a_ddp_run_resumed_mid_epoch_or_at_an_epoch_end_is_the_uninterrupted_ddp_run(tmp_path):
    """The README's claim for DDP: a resume from an end-of-epoch checkpoint, or from a step checkpoint
    at an epoch's end or in the middle of one (every rank skips its own trained part), is exact."""
    # One -m sweep of 2-process CPU DDP jobs (gloo), 2 batches a rank an epoch, 2 epochs: job 0 runs
    # uninterrupted; jobs 1-3 continue its end-of-epoch-0 checkpoint, its step checkpoint of step 2
    # (an epoch's end) and of step 3 (half of epoch 1).
    straight = tmp_path / "0"
    starts = [straight / "checkpoints" / "step2.ckpt", straight / "steps" / "epoch=0-step=2.ckpt",
              straight / "steps" / "epoch=1-step=3.ckpt"]  # fmt: skip
    proc = run_entry(
        "train.py", "-m", *SMALL, "trainer.accelerator=cpu", "trainer.devices=2",
        "callbacks.model_checkpoint.save_top_k=-1", *step_checkpoints("${paths.output_dir}/steps", 1),
        f"ckpt_path=null,{','.join(repr(str(start)) for start in starts)}",
        f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${hydra.job.num}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in "0123":  # each on 2 processes, to the same total step count
        assert (results(tmp_path / job)["world_size"], results(tmp_path / job)["global_step"]) == (2, 4), job
    last = Path("checkpoints") / "last.ckpt"
    wheres = ["the start of epoch 1", "the start of epoch 1", "epoch 1 after batch 1"]
    for job, start, where in zip("123", starts, wheres, strict=True):
        step = ckpt(start)["global_step"]
        assert f"resuming at step {step}: {where}" in (tmp_path / job / "train.log").read_text()
        assert_same_training(straight / last, tmp_path / job / last)


@pytest.mark.parametrize("limit", list(LIMITS))
def test_a_standalone_run_continues_exactly(limit: str, tmp_path):
    overrides = [*LIMITS[limit][0], "arch=largest"]
    fit(tmp_path / "straight", *overrides)
    fit(tmp_path / "first", *overrides, "trainer.max_steps=2")
    fit(tmp_path / "first", *overrides, "ckpt_path=last")
    last = Path("checkpoints") / "last.ckpt"
    assert_same_state(tmp_path / "straight" / last, tmp_path / "first" / last)


def test_a_continuation_that_would_train_nothing_says_so(tmp_path):
    fit(tmp_path, "trainer.max_steps=2")
    before = (tmp_path / "checkpoints" / "last.ckpt").read_bytes(), (tmp_path / "results.json").read_bytes()
    with pytest.raises(ConfigError, match="would train nothing: it is at step 2 and trainer.max_steps=2"):
        fit(tmp_path, "trainer.max_steps=2", "ckpt_path=last")
    fit(tmp_path / "one", "trainer.max_epochs=1")
    with pytest.raises(ConfigError, match="would train nothing: it has finished 1 epoch and trainer.max_epochs=1"):
        fit(tmp_path / "more", "trainer.max_epochs=1", f"ckpt_path={tmp_path / 'one' / 'checkpoints' / 'last.ckpt'}")
    assert ((tmp_path / "checkpoints" / "last.ckpt").read_bytes(), (tmp_path / "results.json").read_bytes()) == before
    assert not (tmp_path / "more" / "results.json").exists()


@pytest.mark.parametrize(
    ("schedule", "warned"), [("scheduler.min_lr_ratio=1.0", False), ("scheduler.min_lr_ratio=0.0", True)]
)
def test_extending_a_run_warns_when_its_lr_schedule_changes(schedule: str, warned: bool, tmp_path, caplog):
    fit(tmp_path, schedule, "trainer.max_steps=2")
    with caplog.at_level("WARNING", logger="fairnas"):
        fit(tmp_path, schedule, "trainer.max_steps=4", "ckpt_path=last")
    message = "the LR schedule now spans 4 optimizer steps, the run resumed at step 2 planned 2"
    assert (message in caplog.text) is warned


def test_ckpt_path_last_refuses_a_directory_holding_two_runs(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for name in ("last.ckpt", "last-v1.ckpt"):
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    with pytest.raises(ConfigError, match=r"more than one run \(last.ckpt, last-v1.ckpt\)"):
        find_resume_point("last", tmp_path)


def test_ckpt_path_last_names_an_unreadable_candidate_and_what_to_do(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    bad = tmp_path / "hpc_ckpt_3.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError) as error:
        find_resume_point("last", tmp_path)
    message = str(error.value)
    assert message.startswith(f"ckpt_path=last: cannot read checkpoint {bad} safely (")
    assert message.endswith("Move it out of the run directory, or give the checkpoint to continue as ckpt_path=<file>")
    assert bad.read_bytes() == b"not a checkpoint"  # left as it was
    assert find_resume_point(None, tmp_path) is None
    with pytest.raises(CheckpointError, match=rf"checkpoint {tmp_path}/nope.ckpt does not exist: give ckpt_path="):
        find_resume_point(str(tmp_path / "nope.ckpt"), tmp_path)


def test_two_runs_never_share_a_run_directory(tmp_path: Path):
    args = ["dataset=synthetic", "dataset.batch_size=16", "dataset.num_train=4096", "trainer.limit_val_batches=1",
            "logger=none", "callbacks.model_checkpoint.every_n_train_steps=1"]  # fmt: skip
    first = start_entry("train.py", *args, "trainer.max_steps=100000", f"hydra.run.dir={tmp_path}")
    last, config = tmp_path / "checkpoints" / "last.ckpt", tmp_path / ".hydra" / "config.yaml"
    deadline = time.time() + 300
    while first.poll() is None and time.time() < deadline and not last.exists():
        time.sleep(0.1)
    assert last.exists() and first.poll() is None, "the first run should be training"
    assert f"pid {first.pid}" in (tmp_path / ".run.lock").read_text()
    recorded = config.read_bytes()
    second = run_entry("train.py", *args, "trainer.max_steps=2", f"hydra.run.dir={tmp_path}")
    assert second.returncode == 2 and f"is in use by another run (pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr and config.read_bytes() == recorded  # nothing of the first overwritten
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 128 + signal.SIGTERM
    step = ckpt(last)["global_step"]
    fresh = run_entry("train.py", *args, "trainer.max_steps=2", f"hydra.run.dir={tmp_path}")  # the lock is free now
    assert fresh.returncode == 2 and "already holds another run's checkpoints (checkpoints/last.ckpt" in fresh.stderr
    assert "ckpt_path=last" in fresh.stderr and config.read_bytes() == recorded and ckpt(last)["global_step"] == step
    more = run_entry("train.py", *args, f"trainer.max_steps={step + 1}", "ckpt_path=last", f"hydra.run.dir={tmp_path}")
    assert more.returncode == 0, more.stderr[-3000:]
    assert results(tmp_path)["global_step"] == step + 1


def _loop(started: int, completed: int, trained: int, ended: bool, step: int) -> dict:
    epochs = {"ready": started, "started": started, "processed": completed, "completed": completed}
    batches = {"ready": trained, "started": trained, "processed": trained, "completed": trained}
    progress = {"total": dict(batches), "current": batches, "is_last_batch": ended}
    loop = {"epoch_progress": {"total": dict(epochs), "current": epochs}, "epoch_loop.batch_progress": progress}
    return {"global_step": step, "loops": {"fit_loop": loop}}


@pytest.mark.parametrize(
    ("checkpoint", "position"),
    [
        (_loop(1, 1, 4, True, 4), (1, 0)),  # end of training after a whole epoch
        (_loop(1, 1, 2, False, 2), (0, 2)),  # end of training at a max_steps stop: epoch 0 goes on
        (_loop(2, 1, 4, True, 8), (2, 0)),  # end of epoch 1 (on_train_epoch_end)
        (_loop(2, 1, 3, False, 7), (1, 3)),  # after step 7 (every_n_train_steps, SIGTERM)
        (_loop(0, 0, 0, False, 0), (0, 0)),  # nothing trained yet
    ],
)
def test_the_position_a_checkpoint_continues_from(checkpoint: dict, position: tuple[int, int]):
    from fairnas.run.resume import align_loop_state, checkpoint_position

    assert checkpoint_position(checkpoint) == position
    assert align_loop_state(checkpoint) == position
    assert checkpoint_position(checkpoint) == position  # the aligned form says the same


def test_what_trains_nothing():
    from fairnas.run.resume import nothing_to_train

    mid_epoch_1 = _loop(2, 1, 3, False, 7)
    assert nothing_to_train(mid_epoch_1, max_steps=-1, max_epochs=2) is None
    assert nothing_to_train(mid_epoch_1, max_steps=8, max_epochs=2) is None
    assert "at step 7 and trainer.max_steps=7" in nothing_to_train(mid_epoch_1, max_steps=7, max_epochs=2)
    assert "finished 1 epoch and trainer.max_epochs=1" in nothing_to_train(mid_epoch_1, max_steps=-1, max_epochs=1)
    assert nothing_to_train(_loop(1, 1, 4, True, 4), max_steps=-1, max_epochs=2) is None
