"""End to end through the real entry point, as a user runs it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_entry, start_entry

from fairnas.data import DEBIAN_FASHION_MNIST_DIR


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def usage(run_dir: Path) -> list[int]:
    with open(run_dir / "block_usage.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {"layer", "choice", "count"}
    return [int(r["count"]) for r in rows]


def validation_accuracies(ckpt: Path, bn_batches: int, val_batches: int, k: int = 8, seed: int = 0) -> list[float]:
    """What validation should report, recomputed with the search's evaluator from the final
    checkpoint: the K validation architectures (drawn from ``val_seed``), each with its BN
    statistics re-estimated on the calibration batches, on the first ``val_batches`` batches."""
    import numpy as np
    import torch

    from fairnas.models import CostModel
    from fairnas.run import load_supernet
    from fairnas.search import DeviceBatches, SupernetEvaluator

    supernet, record = load_supernet(ckpt)
    dm = record.data.build()
    dm.setup("fit")
    cpu = torch.device("cpu")
    calibration = DeviceBatches(dm.calibration_dataloader(bn_batches, seed=seed), None, cpu)
    evaluator = SupernetEvaluator(
        supernet, calibration, DeviceBatches(dm.val_dataloader(), val_batches, cpu), CostModel.create(supernet.space)
    )
    space = supernet.space
    archs = np.random.default_rng(seed).integers(0, space.num_choices, (k, space.num_layers))
    return [evaluator.evaluate(tuple(int(c) for c in arch))["acc1"] for arch in archs]


def test_supernet_on_synthetic_data(tmp_path):
    proc = run_entry(
        "train.py",
        "dataset=synthetic",
        "dataset.batch_size=32",
        "trainer.max_steps=5",
        "trainer.limit_val_batches=2",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = results(tmp_path)
    assert r["global_step"] == 5 and r["seed"] == 0 and r["wall_time_s"] > 0
    accs = validation_accuracies(tmp_path / "checkpoints" / "last.ckpt", bn_batches=10, val_batches=2)
    assert r["val/acc_mean"] == pytest.approx(sum(accs) / len(accs), abs=1e-6)
    assert (r["val/acc_min"], r["val/acc_max"]) == pytest.approx((min(accs), max(accs)), abs=1e-6)
    assert r["fairness_spread"] == 0 and r["usage/spread"] == 0
    assert set(usage(tmp_path)) == {5}
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "csv" / "metrics.csv").exists()


@pytest.mark.skipif(not Path(DEBIAN_FASHION_MNIST_DIR).exists(), reason="dataset-fashion-mnist not installed")
def test_default_fashion_mnist_on_a_small_subset(tmp_path):
    proc = run_entry(
        "train.py",
        "dataset.train_subset=2048",
        "trainer.max_steps=16",
        "trainer.limit_val_batches=2",
        "system.val_bn_batches=2",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = results(tmp_path)
    assert r["global_step"] == 16 and r["search_space"] == "fairnas_mini" and r["sampler"] == "StrictFairSampler"
    assert r["val/acc_mean"] > 0.2  # 16 steps already beat chance (0.1) twice over on real data
    assert set(usage(tmp_path)) == {16}


def test_fairnas_a_standalone_reports_its_published_cost(tmp_path):
    proc = run_entry(
        "train.py",
        "arch=fairnas_a",
        "search_space=fairnas_imagenet",
        "dataset=synthetic",
        "trainer.max_steps=1",
        "dataset.batch_size=2",
        "dataset.num_train=4",
        "dataset.num_val=2",
        "trainer.limit_val_batches=1",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = results(tmp_path)
    assert r["madds"] == pytest.approx(388.1e6, rel=1e-3) and r["params"] == pytest.approx(4.651e6, rel=1e-3)
    assert r["arch"] == "4-0-4-1-5-0-0-5-5-2-1-2-2-1-1-5-1-5-3" and r["global_step"] == 1
    assert "val/acc" in r
    assert not (tmp_path / "block_usage.csv").exists()  # a stand-alone net has no choice blocks


@pytest.mark.parametrize("arch", ["[1,2,3,4,5,0,1,2]", "1-2-3-4-5-0-1-2", "largest"])
def test_arch_forms_on_the_command_line(tmp_path, arch):
    proc = run_entry(
        "train.py",
        f"arch={arch}",
        "dataset=synthetic",
        "dataset.batch_size=16",
        "trainer.max_steps=1",
        "trainer.limit_val_batches=1",
        "logger=none",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert results(tmp_path)["arch"] == ("5-5-5-5-5-5-5-5" if arch == "largest" else "1-2-3-4-5-0-1-2")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["arch=1-2-9-4-5-0-1-2"], "layer 2: choice 9 is out of range; allowed 0..5"),
        (["arch=1-2-3"], "has 3 entries but space 'fairnas_mini' has 8 searchable layers"),
        (["arch=fairnas_z"], "cannot read architecture 'fairnas_z'"),
        (["sampler=fixed"], "Missing mandatory value: sampler.arch"),
        (["sampler=fixed", "sampler.arch=0-0"], "has 2 entries"),
        (["sampler=biased", "sampler.probs=[1,2]"], "6 non-negative weights"),
        # an SGD recipe's momentum merged into another optimizer, schedule settings without a schedule
        (["optimizer=adamw", "+optimizer.momentum=0.9"], "AdamW does not take these settings"),
        (["scheduler=none", "+scheduler.min_lr_ratio=1.0"], "scheduler=none, but scheduler.min_lr_ratio set"),
    ],
)
def test_bad_input_gets_one_clear_error(tmp_path, overrides, message):
    proc = run_entry(
        "train.py", *overrides, "dataset=synthetic", "dataset.batch_size=16", "trainer.max_steps=1",
        f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert message in proc.stderr and proc.stderr.count("error: ") == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results.json").exists()


# Runs train.py with the Debian directory moved to a path that does not exist, as on a machine
# without the dataset-fashion-mnist package (argv: that path, then train.py and its overrides).
_WITHOUT_DEBIAN_DIR = """
import runpy, sys
import fairnas.data.datamodules as datamodules
datamodules.DEBIAN_FASHION_MNIST_DIR = sys.argv[1]
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_missing_fashion_mnist_names_the_three_fixes(tmp_path):
    import os
    import subprocess
    import sys

    empty, cache = tmp_path / "empty", tmp_path / "cache"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_DEBIAN_DIR, str(tmp_path / "no-debian"), str(ROOT / "train.py"),
         "dataset=fashion_mnist", f"dataset.data_dir={empty}", "dataset.download=false", "trainer.max_steps=1",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "FAIRNAS_DATA_DIR": str(cache)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    for needle in ("DataNotFoundError: Fashion-MNIST data not found", str(empty), str(tmp_path / "no-debian"),
                   str(cache), "dataset.data_dir=", "apt-get install dataset-fashion-mnist", "dataset.download=true",
                   "downloading was disabled"):  # fmt: skip
        assert needle in proc.stderr, (needle, proc.stderr[-2000:])
    assert not (tmp_path / "run" / "results.json").exists()


def test_unknown_config_option_lists_the_valid_ones(tmp_path):
    proc = run_entry("train.py", "sampler=nope", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr  # Hydra's own config error: exit code 1
    assert "Could not find 'sampler/nope'" in proc.stderr and "sf" in proc.stderr and "biased" in proc.stderr


def test_multirun_sweep_over_samplers_writes_one_run_dir_each(tmp_path):
    proc = run_entry(
        "train.py",
        "-m",
        "sampler=sf,ef",
        "dataset=synthetic",
        "search_space.input_size=8",
        "dataset.batch_size=64",
        "trainer.max_steps=6",
        "trainer.limit_val_batches=1",
        "logger=none",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in tmp_path.glob("*/results.json"))
    assert len(runs) == 2
    by_sampler = {results(r)["sampler"]: r for r in runs}
    assert set(by_sampler) == {"StrictFairSampler", "UniformSampler"}
    assert set(usage(by_sampler["StrictFairSampler"])) == {6}
    assert sum(usage(by_sampler["UniformSampler"])) == 6 * 8  # 6 optimizer steps of one path each


def test_resume_from_checkpoint_continues_the_run(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    common = [
        "dataset=synthetic",
        "search_space.input_size=8",
        "dataset.batch_size=64",
        "trainer.limit_val_batches=1",
        "logger=none",
        "trainer.max_epochs=3",
    ]
    assert run_entry("train.py", *common, "trainer.max_steps=4", f"hydra.run.dir={first}").returncode == 0
    proc = run_entry(
        "train.py",
        *common,
        "trainer.max_steps=8",
        f"ckpt_path={first}/checkpoints/last.ckpt",
        f"hydra.run.dir={second}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert results(second)["global_step"] == 8
    assert set(usage(second)) == {8}  # the usage counts were restored with the weights


def test_optimizer_and_scheduler_are_groups_that_experiments_swap(tmp_path):
    proc = run_entry(
        "train.py", "dataset=synthetic", "search_space.input_size=8", "optimizer=adamw", "optimizer.lr=0.01",
        "scheduler=none", "trainer.max_steps=2", "trainer.limit_val_batches=1", "system.val_bn_batches=1",
        "logger=csv", "trainer.log_every_n_steps=1", f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    recipe = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["fairnas"]["recipe"]
    assert recipe["optimizer"]["target"] == "torch.optim.AdamW" and recipe["scheduler"] is None
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        rates = {float(row["train/lr"]) for row in csv.DictReader(f) if row.get("train/lr")}
    assert len(rates) == 1 and rates.pop() == pytest.approx(0.01)  # no schedule: the rate stays (logged as float32)


def test_every_logger_gets_the_block_usage_telemetry(tmp_path):
    proc = run_entry(
        "train.py",
        "logger=many",
        "dataset=synthetic",
        "dataset.batch_size=64",
        "trainer.max_steps=4",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    assert "usage/heatmap" in events.Tags()["images"]
    assert "usage/layer_0" in events.Tags()["histograms"]
    assert "usage/spread" in events.Tags()["scalars"]
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"usage/spread", "usage/l0_c0", "usage/l7_c5", "val/acc_mean"} <= set(header)
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))


def test_no_api_key_is_written_to_logs_configs_or_results(tmp_path):
    secret = "fairnas-test-secret-4f1c9e0b7a2d"  # a W&B key in the environment, as a user would set it
    proc = run_entry(
        "train.py", "logger=many", "dataset=synthetic", "dataset.batch_size=64", "trainer.max_steps=2",
        "trainer.limit_val_batches=1", f"hydra.run.dir={tmp_path}", env={"WANDB_API_KEY": secret},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 10  # logs, configs, results, checkpoints, W&B and TensorBoard files
    assert not [p for p in files if secret.encode() in p.read_bytes()]
    assert secret not in proc.stdout + proc.stderr


def test_a_diverging_run_stops_with_the_last_good_state_saved(tmp_path):
    proc = run_entry(
        "train.py", "dataset=synthetic", "dataset.batch_size=64", "optimizer.lr=1e30", "trainer.max_steps=6",
        "trainer.limit_val_batches=1", "logger=none", f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 2 and "became NaN/inf" in proc.stderr and "Traceback" not in proc.stderr
    import torch

    ckpt = torch.load(tmp_path / "checkpoints" / "last_good.ckpt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "results.json").exists()


def test_skipped_nonfinite_updates_are_counted_and_results_json_stays_valid_json(tmp_path):
    proc = run_entry(
        "train.py", "dataset=synthetic", "dataset.batch_size=64", "optimizer.lr=1e30", "trainer.max_steps=4",
        "trainer.limit_val_batches=1", "system.val_bn_batches=1", "logger=none", "system.nonfinite=skip",
        f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "results.json").read_text()
    r = json.loads(text, parse_constant=lambda c: pytest.fail(f"results.json holds {c}, which is not JSON"))
    assert r["nonfinite_steps"] >= 1 and r["train/loss"] is None  # NaN, written as JSON's null


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["search_space=fairnas_cifar"], "was trained with search space 'fairnas_mini'"),
        (["arch=largest"], "is from a run with arch=None"),
    ],
)
def test_resume_refuses_a_checkpoint_of_another_run_kind(tmp_path, overrides, message):
    first = tmp_path / "a"
    common = ["dataset=synthetic", "dataset.batch_size=64", "trainer.limit_val_batches=1", "logger=none"]
    assert run_entry("train.py", *common, "trainer.max_steps=1", f"hydra.run.dir={first}").returncode == 0
    before = (first / "checkpoints" / "last.ckpt").read_bytes()
    proc = run_entry(
        "train.py", *common, *overrides, f"ckpt_path={first}/checkpoints/last.ckpt", f"hydra.run.dir={tmp_path / 'b'}"
    )
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert (first / "checkpoints" / "last.ckpt").read_bytes() == before  # nothing on disk damaged


def test_resume_refuses_other_training_settings_naming_each_difference(tmp_path):
    first = tmp_path / "a"
    common = ["dataset=synthetic", "dataset.batch_size=64", "trainer.limit_val_batches=1", "logger=none"]
    assert run_entry("train.py", *common, "trainer.max_steps=1", f"hydra.run.dir={first}").returncode == 0
    last = first / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    changed = ["optimizer._target_=torch.optim.Adam", "~optimizer.momentum", "~optimizer.nesterov", "sampler=ef",
               "seed=1", "dataset.batch_size=32", "trainer.max_steps=2"]  # fmt: skip
    proc = run_entry("train.py", *common, *changed, f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'b'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for line in [
        "optimizer: 'torch.optim.SGD' -> 'torch.optim.Adam'",  # was KeyError: 'step' mid-resume
        "optimizer.momentum: 0.9 -> (unset)",
        "sampler: 'fairnas.samplers.StrictFairSampler' -> 'fairnas.samplers.UniformSampler'",
        "seed: 0 -> 1",
        "dataset.batch_size: 64 -> 32",
    ]:
        assert f"\n  {line}\n" in proc.stderr, line
    assert "trainer.max_steps" not in proc.stderr.split("(saved -> now)")[1].split("Resume with")[0]  # allowed
    assert last.read_bytes() == before and not (tmp_path / "b" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset.batch_size=1024"], "fewer than batch_size=1024"),
        (["dataset=fashion_mnist", "dataset.data_dir={idx}", "dataset.val_size=0"], "empty validation split"),
        (["trainer.accelerator=gpu", "trainer.devices=2"], "MisconfigurationException"),
        (["trainer.devices=abc"], "is not a number, a list of ids or 'auto'"),
        (["ckpt_path=/nonexistent/last.ckpt"], "does not exist"),
    ],
)
def test_bad_data_and_trainer_settings_get_one_clear_error(tmp_path, overrides, message):
    if any("{idx}" in o for o in overrides):  # small generated Fashion-MNIST-shaped IDX files
        import numpy as np

        from fairnas.data import write_idx

        idx, rng = tmp_path / "idx", np.random.default_rng(0)
        idx.mkdir()
        for split, n in (("train", 64), ("t10k", 16)):
            write_idx(idx / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
            write_idx(idx / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
        overrides = [o.format(idx=idx) for o in overrides]
    proc = run_entry("train.py", "dataset=synthetic", *overrides, "trainer.max_steps=1", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_a_sigterm_from_outside_saves_the_state_and_the_continued_run_is_the_uninterrupted_one(tmp_path):
    """kill -TERM to a running train.py (as a scheduler sends it): exit 143 with the state of the last finished
    step saved; ckpt_path=last continues it; the result equals a run never interrupted, bit for bit (weights,
    BN statistics, optimizer and schedule state, block usage, the final metrics). Dropout and augmentation
    are on, and the signal lands in the second epoch."""
    import signal
    import time

    from conftest import COMMON, assert_same_training

    args = [*COMMON, "dataset.num_train=128", "dataset.batch_size=16", "trainer.max_steps=12",
            "trainer.limit_val_batches=1"]  # fmt: skip  # 8 steps an epoch
    run, reference = tmp_path / "run", tmp_path / "reference"
    wait = ["+callbacks.wait._target_=conftest.WaitForSigtermAt", "+callbacks.wait.step=10"]
    proc = start_entry("train.py", *args, *wait, f"hydra.run.dir={run}", merge=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "at_step_10").exists() and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "state saved to" in out, out[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    done = run_entry("train.py", *args, "ckpt_path=last", f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert run_entry("train.py", *args, f"hydra.run.dir={reference}").returncode == 0
    assert_same_training(run / "checkpoints" / "last.ckpt", reference / "checkpoints" / "last.ckpt")
    first, second = results(run), results(reference)
    assert first["global_step"] == second["global_step"] == 12
    assert {k: v for k, v in first.items() if k.startswith("val/")} == {
        k: v for k, v in second.items() if k.startswith("val/")
    }
