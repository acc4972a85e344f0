"""The search stage: evaluator (BN recalibration, cache, resume), checkpoints, search.py end to end."""

from __future__ import annotations

import csv
import json
import pickle
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import run_entry, start_entry, tiny_space

from fairnas.data import SyntheticDataModule
from fairnas.errors import ConfigError
from fairnas.models import CostModel, Supernet
from fairnas.models.bn import bn_layers, recalibrate
from fairnas.run.checkpoint import CheckpointError, load_supernet
from fairnas.search import DeviceBatches, ResultCache, SupernetEvaluator, materialise


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


COSTS = {"madds": 1e6, "params": 1e4}


def test_cache_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    cache = ResultCache(path, {})
    cache.put("0-0-0", {"acc1": 0.5, **COSTS})
    with open(path, "a") as f:
        f.write('{"arch": "1-1-1", "acc')  # a crash in the middle of a write
    with pytest.warns(UserWarning, match="torn last line"):
        resumed = ResultCache(path, {})
    assert resumed.get("0-0-0")["acc1"] == 0.5 and "1-1-1" not in resumed
    resumed.put("1-1-1", {"acc1": 0.25, **COSTS})
    assert ResultCache(path, {}).get("1-1-1")["acc1"] == 0.25


def test_cache_keeps_a_complete_record_whose_newline_was_lost(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    ResultCache(path, {}).put("0-0-0", {"acc1": 0.5, **COSTS})
    path.write_text(path.read_text().rstrip("\n"))  # crash between the record and its newline
    resumed = ResultCache(path, {})
    resumed.put("1-1-1", {"acc1": 0.25, **COSTS})
    again = ResultCache(path, {})
    assert again.get("0-0-0")["acc1"] == 0.5 and again.get("1-1-1")["acc1"] == 0.25


def test_checkpoint_errors_are_clear_and_code_never_runs(tmp_path):
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(CheckpointError) as error:
        load_supernet(missing)
    assert str(error.value) == f"checkpoint {missing} does not exist: give ckpt_path=<run dir>/checkpoints/last.ckpt"
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {}, "fairnas": {}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=r"truncated, corrupt, or not a checkpoint written by fairnas train\.py"):
        load_supernet(truncated)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match=r"is not a fairnas checkpoint \(no 'fairnas' metadata\): train it with"):
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
    searched = [r for r in rows if r["searched"] == "True"]
    assert len(searched) == 6 and {"arch", "name", "acc1", "madds", "params"} <= set(rows[0])
    assert {r["name"] for r in rows if r["searched"] == "False"} <= {"smallest", "largest"}
    assert (out / "pareto.png").stat().st_size > 0
    check_outputs(out)
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["best"]["retrain"].startswith("python train.py search_space=fairnas_mini dataset=synthetic")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "search/pareto" in events.Tags()["images"]
    results = json.loads((out / "results.json").read_text())
    assert results["num_searched"] == 6 and results["new_evaluations"] == results["num_evaluated"] == len(rows)
    assert len(rows) == 6 + 2 - len({r["name"] for r in searched if r["name"]})  # + the named archs not drawn
    assert "from the strategy + " in proc.stderr + proc.stdout
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
    rows = [r for r in check_outputs(out, limits) if r["searched"] == "True"]  # the space's named models aside
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


@pytest.mark.parametrize("schema", ["current", "schema-0"])
def test_search_py_builds_nothing_a_checkpoint_names(supernet_run, tmp_path, schema):
    """A crafted checkpoint of plain data and tensors (it passes weights_only) hides objects to build
    in its dataset settings: search.py runs none of them and says why, with exit code 2."""
    marker = tmp_path / "pwned"
    evil = {"_target_": "os.makedirs", "_args_": [str(marker)]}
    ckpt = torch.load(supernet_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    record = ckpt["fairnas"]
    if schema == "current":
        record["data"]["params"]["augment"] = evil
    else:  # the metadata dict of checkpoints written before run records, the dataset's _target_ in it
        dataset = {"_target_": "fairnas.data.SyntheticDataModule", "batch_size": 64, **record["data"]["params"]}
        keys = ("search_space", "seed", "num_classes", "in_channels", "arch", "retrain_overrides")
        ckpt["fairnas"] = {**{k: record[k] for k in keys}, "dataset": {**dataset, "augment": evil}}
    crafted = tmp_path / "crafted.ckpt"
    torch.save(ckpt, crafted)
    proc = run_entry("search.py", f"ckpt_path={crafted}", "strategy=random", "strategy.num_samples=2",
                     f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "CheckpointError" in proc.stderr and "params.augment._target_: keys starting with '_'" in proc.stderr
    assert not marker.exists()


def test_a_block_module_a_checkpoint_names_is_never_imported(supernet_run, tmp_path, monkeypatch):
    """A crafted record names a module of block kinds: search.py and export.py refuse it without importing it."""
    marker = tmp_path / "imported"
    (tmp_path / "crafted_blocks.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Block: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # importable by the programs (forks of this process) if they tried
    ckpt = torch.load(supernet_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["fairnas"]["search_space"]["blocks"] = ["crafted_blocks.Block"]
    crafted = tmp_path / "crafted.ckpt"
    torch.save(ckpt, crafted)
    programs = [("search.py", ["strategy=random", "strategy.num_samples=2"]), ("export.py", ["arch=largest"])]
    for program, args in programs:
        proc = run_entry(program, f"ckpt_path={crafted}", *args, f"hydra.run.dir={tmp_path / program}")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert "uses the block kind 'crafted_blocks.Block' of a module of its own, and a checkpoint never imports " \
            "code" in proc.stderr  # fmt: skip
        assert not marker.exists()


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
    import signal
    import time

    out = tmp_path / "search"
    args = [f"ckpt_path={supernet_run / 'checkpoints' / 'last.ckpt'}", "strategy=random", "strategy.num_samples=40",
            "strategy.batch_size=1", "evaluator.bn_batches=1", f"hydra.run.dir={out}"]  # fmt: skip
    cache = out / "evaluations.jsonl"
    proc = start_entry("search.py", *args)
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
    assert results["num_searched"] == 40 and results["new_evaluations"] == len(archs) - len(before)
    assert results["num_evaluated"] == len(archs)  # the 40 and the named models not among them


def test_two_searches_never_share_a_run_directory(supernet_run, tmp_path):
    import signal
    import time

    out = tmp_path / "search"
    args = [f"ckpt_path={supernet_run / 'checkpoints' / 'last.ckpt'}", "strategy=random", "strategy.num_samples=5000",
            "strategy.batch_size=1", "evaluator.bn_batches=1", f"hydra.run.dir={out}"]  # fmt: skip
    first = start_entry("search.py", *args)
    cache = out / "evaluations.jsonl"
    deadline = time.time() + 300
    while (
        first.poll() is None and time.time() < deadline and not (cache.exists() and cache.read_text().count("\n") > 2)
    ):
        time.sleep(0.05)
    assert first.poll() is None, "the first search should be running"
    second = run_entry("search.py", *args[:-1], "strategy.num_samples=2", f"hydra.run.dir={out}")
    header = cache.read_text().splitlines()[0]
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert second.returncode == 2 and f"is in use by another run (pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert not (out / "results.json").exists() and not (out / "evaluated.csv").exists()  # the second wrote nothing
    assert cache.read_text().splitlines()[0] == header


def test_a_checkpoint_with_nonfinite_weights_is_refused(tmp_path):
    net = trained_supernet()
    data = {"_target_": "fairnas.data.SyntheticDataModule", "image_size": 8, "channels": 3, "num_classes": 4,
            "batch_size": 8}  # fmt: skip
    meta = {"search_space": net.space.to_dict(), "dataset": data, "seed": 0, "num_classes": 4, "in_channels": 3,
            "arch": None}  # fmt: skip
    state = {f"supernet.{k}": v.clone() for k, v in net.state_dict().items()}
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": state, "fairnas": meta}, good)
    assert load_supernet(good)[0].space == net.space
    name = next(k for k in state if k.endswith("running_var"))
    state[name][0] = float("inf")  # a diverged run's statistics
    bad = tmp_path / "diverged.ckpt"
    torch.save({"state_dict": state, "fairnas": meta}, bad)
    with pytest.raises(CheckpointError, match=rf"holds NaN/inf in 1 weight or statistics tensors \({name[9:]}\)"):
        load_supernet(bad)


def _record(arch, acc1, madds):
    return {"arch": arch, "blocks": "b", "acc1": acc1, "loss": 1.0, "madds": madds, "params": madds / 10}


def test_the_front_and_the_best_pick_cover_the_named_models(tmp_path):
    from fairnas.search.outputs import with_named, write_outputs

    searched = [_record("1-1", 0.40, 2e6), _record("2-2", 0.42, 3e6), _record("3-3", 0.30, 1e6)]
    # 'smallest' dominates every searched point (as after a short Fashion-MNIST supernet); 'largest'
    # is the most accurate but over the limit; 'mid' was also drawn by the strategy.
    named = {"smallest": _record("0-0", 0.43, 0.4e6), "largest": _record("5-5", 0.9, 9e6), "mid": searched[1]}
    records = with_named(searched, named)
    assert [(r["arch"], r.get("name"), r["searched"]) for r in records] == [
        ("1-1", None, True), ("2-2", "mid", True), ("3-3", None, True), ("0-0", "smallest", False),
        ("5-5", "largest", False),
    ]  # fmt: skip
    front, _ = write_outputs(tmp_path, records, ["madds"], {"max_madds": 5e6}, "python train.py", named)
    assert [records[i]["arch"] for i in front] == ["0-0"]
    with open(tmp_path / "pareto.csv") as f:
        assert [(r["arch"], r["name"]) for r in csv.DictReader(f)] == [("0-0", "smallest")]
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best["best"]["arch"] == "0-0" and best["best"]["name"] == "smallest"
    assert best["covers"] == "all 5 evaluated architectures (3 of them named models of the space) within the limits"
    with open(tmp_path / "evaluated.csv") as f:
        assert len(list(csv.DictReader(f))) == 5  # the one over the limit is still listed (and plotted)


def test_a_list_search_that_nothing_meets_is_one_clear_error(supernet_run, tmp_path):
    out = tmp_path / "search"
    proc = run_entry(
        "search.py", f"ckpt_path={supernet_run / 'checkpoints' / 'last.ckpt'}", "strategy=list",
        "strategy.archs=[5-5-5-5-5-5-5-5]", "strategy.max_madds=1", f"hydra.run.dir={out}",
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "none of the 1 architectures is within the limits (max_madds=1;" in proc.stderr
    assert not any(out.glob("*.csv")) and not (out / "best.yaml").exists() and not (out / "pareto.png").exists()


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"arch": "1-1-1", "acc1": 0.5, "params": 1e4}, "line 3: field 'madds' is missing"),
        ({"arch": "1-1-1", "acc1": "high", **COSTS}, "line 3: field 'acc1' must be a number, got 'high'"),
        ({"arch": 7, **COSTS}, "line 3: field 'arch' must be an architecture string, got 7"),
        (["1-1-1"], "line 3: expected a JSON object, got list"),
    ],
)
def test_a_cache_record_with_a_bad_field_is_one_clear_error(tmp_path, record, message):
    path = tmp_path / "evaluations.jsonl"
    ResultCache(path, {}).put("0-0-0", {"acc1": 0.5, **COSTS})
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")  # whole JSON, so not a torn write: an edited or foreign file
    with open(path, "a") as f:
        f.write(json.dumps({"arch": "2-2-2", "acc1": 0.1, **COSTS}) + "\n")
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=re.escape(f"{path}, {message}; the cache is corrupt")):
        ResultCache(path, {})
    assert path.read_bytes() == before


def test_val_batches_0_names_the_setting():
    net = trained_supernet()
    dm = SyntheticDataModule(image_size=8, channels=3, num_classes=4, num_train=64, num_val=32, batch_size=8)
    dm.setup("fit")
    calib = DeviceBatches(dm.calibration_dataloader(2, seed=0), None, torch.device("cpu"))
    for limit in (0, -1):
        val = DeviceBatches(dm.val_dataloader(), limit, torch.device("cpu"))
        with pytest.raises(ConfigError, match=rf"evaluator.val_batches={limit}: at least 1 validation batch"):
            SupernetEvaluator(net, calib, val, CostModel.create(net.space))


def test_search_py_with_val_batches_0_names_that_setting(supernet_run, tmp_path):
    proc = run_entry(
        "search.py", f"ckpt_path={supernet_run / 'checkpoints' / 'last.ckpt'}", "evaluator.val_batches=0",
        f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "evaluator.val_batches=0: at least 1 validation batch" in proc.stderr
