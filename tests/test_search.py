"""The search stage: evaluator (BN recalibration, cache, resume), checkpoints, search.py end to end."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import run_entry, tiny_space

from fairnas.config_error import ConfigError
from fairnas.data import SyntheticDataModule
from fairnas.models import CostModel, Supernet
from fairnas.models.bn import bn_layers, recalibrate
from fairnas.search import DeviceBatches, ResultCache, SupernetEvaluator, materialise
from fairnas.search.checkpoint import CheckpointError, load_supernet


def trained_supernet(seed=0):
    torch.manual_seed(seed)
    space = tiny_space()
    net = Supernet(space, seed=seed)
    x = torch.randn(16, 3, 8, 8)
    for arch in [(0, 1, 2), (1, 2, 0), (2, 0, 1)]:
        net(x, arch)  # moves running statistics away from their initial values
    return net.eval()


def evaluator(net, cache=None, bn_batches=3):
    dm = SyntheticDataModule(image_size=8, channels=3, num_classes=4, num_train=64, num_val=32, batch_size=8)
    dm.setup("fit")
    calib = materialise(dm.calibration_dataloader(bn_batches, seed=0), None, torch.device("cpu"))
    val = materialise(dm.val_dataloader(), None, torch.device("cpu"))
    return SupernetEvaluator(net, calib, val, CostModel.create(net.space), cache), calib, val


def test_evaluation_is_deterministic_and_never_changes_the_supernet():
    net = trained_supernet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ev, _, _ = evaluator(net)
    first = ev.evaluate((1, 0, 1))
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert ev.evaluate((1, 0, 1)) == first


def test_evaluation_equals_the_exported_network_recalibrated_directly():
    net = trained_supernet()
    ev, calib, val = evaluator(net)
    arch = (2, 1, 0)
    child = net.export(arch).eval()  # a copy: recalibrating it leaves the supernet alone
    with torch.no_grad():
        stale = sum(float(F.cross_entropy(child(x), y, reduction="sum")) for x, y in val)
    recalibrate(child, bn_layers([child]), [x for x, _ in calib])
    with torch.no_grad():
        correct = sum(int((child(x).argmax(1) == y).sum()) for x, y in val)
        loss = sum(float(F.cross_entropy(child(x), y, reduction="sum")) for x, y in val)
    n = sum(len(y) for _, y in val)
    result = ev.evaluate(arch)
    assert result["acc1"] == correct / n
    assert result["loss"] == pytest.approx(loss / n, rel=1e-6)
    assert result["loss"] != pytest.approx(stale / n, rel=1e-5)  # recalibration really happened


def test_streaming_batches_give_the_same_results_as_preloaded_ones():
    net = trained_supernet()
    dm = SyntheticDataModule(image_size=8, channels=3, num_classes=4, num_train=64, num_val=32, batch_size=8)
    dm.setup("fit")
    cpu = torch.device("cpu")
    results = []
    for preload in (True, False):
        calib = DeviceBatches(dm.calibration_dataloader(3, seed=0), None, cpu, preload)
        val = DeviceBatches(dm.val_dataloader(), 3, cpu, preload)
        assert len(val) == 3
        results.append(SupernetEvaluator(net, calib, val, CostModel.create(net.space)).evaluate((2, 0, 1)))
    assert results[0] == results[1]


def test_cache_resumes_without_evaluating_anything_twice(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    ev, _, _ = evaluator(trained_supernet(), ResultCache(path, {"k": 1}))
    first = ev.accuracy([(0, 0, 0), (1, 1, 1)])
    assert ev.evaluations == 2
    again, _, _ = evaluator(trained_supernet(), ResultCache(path, {"k": 1}))
    assert again.accuracy([(0, 0, 0), (1, 1, 1), (2, 2, 2)])[:2] == first
    assert again.evaluations == 1  # only the new one
    with pytest.raises(ConfigError, match="written with other settings"):
        ResultCache(path, {"k": 2})


def test_latency_is_measured_once_and_cached(tmp_path):
    cache = ResultCache(tmp_path / "c.jsonl", {})
    ev, _, _ = evaluator(trained_supernet(), cache)
    ev.latency, ev.latency_repeats = True, 5
    costs = ev.costs((1, 1, 1))
    assert costs["latency_ms"] > 0 and set(costs) == {"madds", "params", "latency_ms"}
    assert ev.costs((1, 1, 1)) == costs
    assert ev.evaluations == 0  # limits are checked on costs before any accuracy is measured
    assert ev.result((1, 1, 1))["latency_ms"] == costs["latency_ms"] and ev.evaluations == 1
    assert ResultCache(tmp_path / "c.jsonl", {}).get("1-1-1")["latency_ms"] == costs["latency_ms"]


def test_cache_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    cache = ResultCache(path, {})
    cache.put("0-0-0", {"acc1": 0.5})
    with open(path, "a") as f:
        f.write('{"arch": "1-1-1", "acc')  # a crash in the middle of a write
    with pytest.warns(UserWarning, match="torn last line"):
        resumed = ResultCache(path, {})
    assert resumed.get("0-0-0")["acc1"] == 0.5 and "1-1-1" not in resumed
    resumed.put("1-1-1", {"acc1": 0.25})
    assert ResultCache(path, {}).get("1-1-1")["acc1"] == 0.25


def test_cache_keeps_a_complete_record_whose_newline_was_lost(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    ResultCache(path, {}).put("0-0-0", {"acc1": 0.5})
    path.write_text(path.read_text().rstrip("\n"))  # crash between the record and its newline
    resumed = ResultCache(path, {})
    resumed.put("1-1-1", {"acc1": 0.25})
    again = ResultCache(path, {})
    assert again.get("0-0-0")["acc1"] == 0.5 and again.get("1-1-1")["acc1"] == 0.25


def test_checkpoint_errors_are_clear_and_code_never_runs(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_supernet(tmp_path / "missing.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {}, "fairnas": {}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_supernet(truncated)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a fairnas checkpoint"):
        load_supernet(foreign)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": Evil(), "fairnas": {}}, f)
    with pytest.raises(CheckpointError, match="checkpoints that need code to load are refused"):
        load_supernet(evil)
    assert not marker.exists()


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def check_outputs(out: Path, limits: dict[str, float] | None = None) -> list[dict]:
    """pareto.csv is exactly the non-dominated set (accuracy up, MAdds down) of every evaluated row
    (with the space's named models if the front includes them); best.yaml's best is the most
    accurate evaluated row within the limits, its front is pareto.csv. Returns evaluated.csv's rows."""
    limits = limits or {}
    rows, front = read_csv(out / "evaluated.csv"), read_csv(out / "pareto.csv")
    points = {r["arch"]: (float(r["acc1"]), float(r["madds"])) for r in rows}
    assert len(points) == len(rows)  # nothing evaluated twice
    if any(r["arch"] not in points for r in front):  # the front also weighs the space's named models
        for named in json.loads((out / "results.json").read_text())["named"].values():
            points.setdefault(named["arch"], (named["acc1"], named["madds"]))
    non_dominated = {
        arch for arch, (acc, madds) in points.items()
        if not any(a >= acc and m <= madds and (a, m) != (acc, madds) for a, m in points.values())
    }  # fmt: skip
    assert sorted(r["arch"] for r in front) == sorted(non_dominated)
    by_arch = {r["arch"]: r for r in rows}
    assert all(r == by_arch[r["arch"]] for r in front if r["arch"] in by_arch)  # the same values as evaluated.csv
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["limits"] == limits
    columns = {"max_madds": "madds", "max_params": "params", "max_latency_ms": "latency_ms"}
    feasible = [r for r in rows if all(float(r[columns[k]]) <= v for k, v in limits.items())]
    assert best["best"]["arch"] == max(feasible, key=lambda r: float(r["acc1"]))["arch"]
    assert {e["arch"] for e in best["front"]} == non_dominated
    return rows


@pytest.fixture(scope="module")
def supernet_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("supernet")
    proc = run_entry(
        "train.py", "dataset=synthetic", "dataset.batch_size=64", "trainer.max_steps=4",
        "trainer.limit_val_batches=1", "logger=none", f"hydra.run.dir={run}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_search_py_end_to_end(supernet_run, tmp_path):
    out = tmp_path / "search"
    ckpt = supernet_run / "checkpoints" / "last.ckpt"
    args = [f"ckpt_path={ckpt}", "strategy=random", "strategy.num_samples=6", "evaluator.bn_batches=2",
            "logger=tensorboard", f"hydra.run.dir={out}"]  # fmt: skip
    proc = run_entry("search.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "evaluated.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {"arch", "acc1", "madds", "params"} <= set(rows[0])
    assert (out / "pareto.png").stat().st_size > 0
    check_outputs(out)
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["best"]["retrain"].startswith("python train.py search_space=fairnas_mini dataset=synthetic")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "search/pareto" in events.Tags()["images"]
    results = json.loads((out / "results.json").read_text())
    assert results["num_evaluated"] == 6 and results["new_evaluations"] == 6 + 2  # + the 2 named archs
    # the same search again in the same directory evaluates nothing
    proc = run_entry("search.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["new_evaluations"] == 0
    # the printed command retrains the best architecture from scratch
    cmd = best["best"]["retrain"].split()[2:]
    retrain = tmp_path / "retrain"
    proc = run_entry("train.py", *cmd, "trainer.max_steps=1", "trainer.limit_val_batches=1", f"hydra.run.dir={retrain}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((retrain / "results.json").read_text())["arch"] == best["best"]["arch"]


def test_search_py_under_madds_and_latency_limits(supernet_run, tmp_path):
    out = tmp_path / "search"
    args = [f"ckpt_path={supernet_run / 'checkpoints' / 'last.ckpt'}", "strategy=random", "evaluator.bn_batches=1",
            "evaluator.latency=true", "evaluator.latency_repeats=3", f"hydra.run.dir={out}"]  # fmt: skip
    free = run_entry("search.py", *args, "strategy.num_samples=8")
    assert free.returncode == 0, free.stderr[-3000:]
    rows = check_outputs(out)
    madds, latency = (sorted(float(r[c]) for r in rows) for c in ("madds", "latency_ms"))
    # Limits at the medians of an unlimited search (same directory: the measured latencies are cached).
    limits = {"max_madds": madds[len(madds) // 2], "max_latency_ms": latency[len(latency) // 2]}
    assert any(float(r["madds"]) > limits["max_madds"] or float(r["latency_ms"]) > limits["max_latency_ms"]
               for r in rows)  # fmt: skip
    limited = run_entry(
        "search.py", *args, "strategy.num_samples=3", *(f"strategy.{k}={v!r}" for k, v in limits.items())
    )
    assert limited.returncode == 0, limited.stderr[-3000:]
    rows = check_outputs(out, limits)
    assert len(rows) == 3
    assert all(float(r["madds"]) <= limits["max_madds"] and float(r["latency_ms"]) <= limits["max_latency_ms"]
               for r in rows)  # fmt: skip


def test_search_py_with_another_dataset_keeps_the_training_split_and_checks_its_shape(supernet_run, tmp_path):
    ckpt = supernet_run / "checkpoints" / "last.ckpt"
    common = [f"ckpt_path={ckpt}", "strategy=random", "strategy.num_samples=3", "evaluator.bn_batches=1"]
    out = tmp_path / "s1"
    proc = run_entry("search.py", *common, "dataset=synthetic", "seed=7", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = json.loads((out / "evaluations.jsonl").read_text().splitlines()[0])
    assert header["fingerprint"]["dataset"]["seed"] == 0  # the training seed, not the strategy's 7
    best = yaml.safe_load((out / "best.yaml").read_text())["best"]["retrain"]
    assert "dataset=synthetic" in best and "search_space=fairnas_mini" in best
    proc = run_entry("search.py", *common, "dataset=synthetic", "dataset.num_classes=3", f"hydra.run.dir={tmp_path}/s2")
    assert proc.returncode == 2 and "the dataset has 3 classes" in proc.stderr and "Traceback" not in proc.stderr


def test_search_py_refuses_a_standalone_checkpoint(tmp_path):
    run = tmp_path / "child"
    assert run_entry(
        "train.py", "arch=largest", "dataset=synthetic", "dataset.batch_size=64", "trainer.max_steps=1",
        "trainer.limit_val_batches=1", "logger=none", f"hydra.run.dir={run}",
    ).returncode == 0  # fmt: skip
    proc = run_entry("search.py", f"ckpt_path={run}/checkpoints/last.ckpt", f"hydra.run.dir={tmp_path / 's'}")
    assert proc.returncode == 2 and "holds a stand-alone network" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_search_killed_mid_way_resumes_without_evaluating_anything_twice(supernet_run, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    out = tmp_path / "search"
    args = [f"ckpt_path={supernet_run / 'checkpoints' / 'last.ckpt'}", "strategy=random", "strategy.num_samples=40",
            "strategy.batch_size=1", "evaluator.bn_batches=1", f"hydra.run.dir={out}"]  # fmt: skip
    cache = out / "evaluations.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "search.py"), *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if cache.exists() and len(cache.read_text().splitlines()) >= 1 + 5:  # header + 5 results
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the search ended before it could be killed"
    before = [json.loads(line)["arch"] for line in cache.read_text().splitlines()[1:] if line.endswith("}")]
    assert 5 <= len(before) < 40
    done = run_entry("search.py", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    lines = [json.loads(line) for line in cache.read_text().splitlines()[1:] if line.strip()]
    archs = [r["arch"] for r in lines]
    assert len(archs) == len(set(archs))  # nothing evaluated twice
    assert archs[: len(before)] == before  # the records written before the kill are intact
    assert results["num_evaluated"] == 40 and results["new_evaluations"] == len(archs) - len(before)
