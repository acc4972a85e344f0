"""From search to deployment: export.py (ONNX, torch.export, checked), latency tables, search.py latency_table=."""

from __future__ import annotations

import csv
import json
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import load_space, run_entry, tiny_space

from fairnas.deploy.export import FILES, export_network, onnx_session
from fairnas.deploy.latency import LatencyTable, Runtime, TorchRuntime, build_table, time_units, validate_table
from fairnas.deploy.network import Deployable, network_from_checkpoint
from fairnas.errors import ConfigError, ExportError
from fairnas.models import build_child
from fairnas.run.checkpoint import load_checkpoint, read_record

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A supernet of fairnas_mini on synthetic data, and a small search of it."""
    root = tmp_path_factory.mktemp("deploy")
    proc = run_entry("train.py", "dataset=synthetic", "dataset.batch_size=64", "trainer.max_steps=4",
                     "trainer.limit_val_batches=1", "logger=none", f"hydra.run.dir={root / 'supernet'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = root / "supernet" / "checkpoints" / "last.ckpt"
    proc = run_entry("search.py", f"ckpt_path={ckpt}", "strategy=random", "strategy.num_samples=4",
                     "evaluator.bn_batches=2", f"hydra.run.dir={root / 'search'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def val_batches(ckpt: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The held-out split the search scores on, rebuilt from the checkpoint's record."""
    datamodule = read_record(load_checkpoint(ckpt), ckpt).data.build()
    datamodule.setup("fit")
    return list(datamodule.val_dataloader())


def onnx_logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    return torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def test_the_best_architecture_retrained_exports_and_runs_in_onnxruntime(searched, tmp_path):
    """The README's path: best.yaml's retrain command (a few steps), export.py, the ONNX file in onnxruntime."""
    best = yaml.safe_load((searched / "search" / "best.yaml").read_text())["best"]
    retrain = tmp_path / "retrain"
    proc = run_entry("train.py", *best["retrain"].split()[2:], "trainer.max_steps=2", "trainer.limit_val_batches=1",
                     "logger=none", f"hydra.run.dir={retrain}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = retrain / "checkpoints" / "last.ckpt"
    out = tmp_path / "export"
    proc = run_entry("export.py", f"ckpt_path={ckpt}", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = json.loads((out / "export_check.json").read_text())
    assert check["passed"] and check["network"]["arch"] == best["arch"] and check["network"]["source"] == "standalone"
    assert set(check["formats"]) == {"onnx", "pt2"} and all(c["passed"] for c in check["formats"].values())
    assert "max |difference| to PyTorch" in proc.stderr + proc.stdout
    # An independent check on real held-out images at a batch size the export never saw: the ONNX file and
    # the torch.export program give the logits of the retrained network as train.py saved it.
    x = torch.cat([b for b, _ in val_batches(ckpt)])[:37]
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    net = build_child(read_record(load_checkpoint(ckpt), ckpt).space(), best["arch"], 10, 1)
    net.load_state_dict({k.removeprefix("net."): v for k, v in saved.items() if k.startswith("net.")})
    with torch.no_grad():
        expected = net.eval()(x)
    assert torch.allclose(onnx_logits(out / "model.onnx", x), expected, rtol=1e-4, atol=1e-5)
    program = torch.export.load(str(out / "model.pt2")).module()
    assert torch.allclose(program(x), expected, rtol=1e-5, atol=1e-6)
    assert not list(out.glob(".export-staging*"))


def test_a_supernet_path_exports_with_the_accuracy_the_search_gave_it(searched, tmp_path):
    """arch=... of a supernet checkpoint: inherited weights with BN recalibrated as the search does, so the
    ONNX network scores on the held-out split what evaluated.csv says (same bn_batches)."""
    ckpt = searched / "supernet" / "checkpoints" / "last.ckpt"
    with open(searched / "search" / "evaluated.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["searched"] == "True")
    out = tmp_path / "export"
    proc = run_entry("export.py", f"ckpt_path={ckpt}", f"arch={row['arch']}", "bn_batches=2", "formats=[onnx]",
                     f"hydra.run.dir={out}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "export.log", "export_check.json", "model.onnx"]  # fmt: skip
    batches = val_batches(ckpt)
    x, y = torch.cat([b for b, _ in batches]), torch.cat([t for _, t in batches])
    logits = onnx_logits(out / "model.onnx", x)
    assert float((logits.argmax(1) == y).float().mean()) == pytest.approx(float(row["acc1"]), abs=1.5 / len(y))
    assert float(F.cross_entropy(logits, y)) == pytest.approx(float(row["loss"]), rel=1e-4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "is a supernet: it holds every architecture of 'fairnas_mini'. Give the one to export, arch=<choices>"),
        (["arch=9-0-0-0-0-0-0-0"], "layer 0: choice 9 is out of range; allowed 0..5"),
        (["arch=1-1-1"], "has 3 entries but space 'fairnas_mini' has 8 searchable layers"),
        (["arch=largest", "formats=[tflite]"], "formats=['tflite']: give one or more of ['onnx', 'pt2']"),
        (["arch=largest", "check.batch_size=1"], "check.batch_size must be a whole number >= 2"),
    ],
)
def test_export_py_refuses_bad_input_with_one_message_and_no_file(searched, tmp_path, args, message):
    out = tmp_path / "export"
    proc = run_entry("export.py", f"ckpt_path={searched / 'supernet' / 'checkpoints' / 'last.ckpt'}", *args,
                     f"hydra.run.dir={out}")  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert message in proc.stderr
    assert not [p for p in out.glob("*") if p.name.startswith("model") or p.name == "export_check.json"]


def test_export_py_refuses_a_checkpoint_of_the_wrong_kind(tmp_path):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    proc = run_entry("export.py", f"ckpt_path={foreign}", f"hydra.run.dir={tmp_path / 'e1'}")
    assert proc.returncode == 2 and "is not a fairnas checkpoint (no 'fairnas' metadata)" in proc.stderr
    proc = run_entry("export.py", f"hydra.run.dir={tmp_path / 'e2'}")
    assert proc.returncode == 2 and "give its checkpoint, ckpt_path=" in proc.stderr


def test_a_standalone_checkpoint_exports_its_own_network_only(tmp_path):
    run = tmp_path / "child"
    proc = run_entry("train.py", "arch=smallest", "dataset=synthetic", "dataset.batch_size=64", "trainer.max_steps=1",
                     "trainer.limit_val_batches=1", "logger=none", f"hydra.run.dir={run}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="holds the stand-alone network arch=0-0-0-0-0-0-0-0, not arch=largest"):
        network_from_checkpoint(ckpt, "largest")
    own = network_from_checkpoint(ckpt, "smallest")
    assert own.source == "standalone" and own.input_shape == (1, 28, 28) and own.arch == "0-0-0-0-0-0-0-0"


# ---------------------------------------------------------------------------------- export in-process
class Noisy(torch.nn.Module):
    """A network whose exported graph draws other random numbers than PyTorch: the check must catch it."""

    def forward(self, x):
        return x.flatten(1)[:, :4] + torch.rand(x.shape[0], 4)


class Bessel(torch.nn.Module):
    def forward(self, x):
        return torch.special.bessel_j0(x.flatten(1)[:, :4])


def deployable(net: torch.nn.Module) -> Deployable:
    return Deployable(net.eval(), tiny_space(), "0-0-0", (3, 8, 8), 4, "standalone", {})


def test_an_export_that_computes_something_else_is_refused_and_nothing_is_written(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"an earlier export")
    with pytest.raises(ExportError, match=r"does not compute what the PyTorch network does \(onnx: max \|difference\|"):
        export_network(deployable(Noisy()), tmp_path, formats=["onnx"])
    assert (tmp_path / "model.onnx").read_bytes() == b"an earlier export"  # left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_an_operator_without_onnx_translation_is_one_clear_error(tmp_path):
    with pytest.raises(ExportError, match="no ONNX translation of the operator prims.bessel_j0.*formats=\\[pt2\\]"):
        export_network(deployable(Bessel()), tmp_path, formats=["pt2", "onnx"])
    assert list(tmp_path.iterdir()) == []


def test_an_operator_the_runtime_lacks_is_one_clear_error():
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    with pytest.raises(ExportError, match=r"onnxruntime .* cannot run the exported graph .*Frobnicate.*lacks"):
        onnx_session(model.SerializeToString())
    assert onnx.__version__


def test_without_the_export_extra_onnx_is_refused_with_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'fairnas\[export\]' \(make setup installs it\)"):
        export_network(deployable(build_child(tiny_space(), "0-1-2", 4, 3)), tmp_path, formats=["onnx"])
    report = export_network(deployable(build_child(tiny_space(), "0-1-2", 4, 3)), tmp_path, formats=["pt2"])
    assert report["passed"] and sorted(p.name for p in tmp_path.iterdir()) == ["export_check.json", FILES["pt2"]]


# ---------------------------------------------------------------------------------- latency tables
class CountingRuntime(Runtime):
    """A runtime on a simulated clock: a call costs a fixed overhead plus 1 ns per parameter of the module, so a
    network's latency is exactly the overhead plus its blocks' costs, which the table must find."""

    name = "simulated"
    OVERHEAD_S = 5e-6

    def __init__(self) -> None:
        super().__init__("cpu", 1)
        self.now = 0.0
        self.clock = lambda: self.now

    @property
    def version(self) -> str:
        return "1"

    def runner(self, module, example):
        cost = self.OVERHEAD_S + 1e-9 * sum(p.numel() for p in module.parameters())

        def run():
            self.now += cost

        return run


def test_a_table_finds_each_blocks_cost_and_predicts_whole_networks_exactly():
    space = tiny_space()
    runtime = CountingRuntime()
    table = build_table(space, runtime, warmup=1, repeats=3, rounds=2, fit_archs=5, seed=0)
    # every non-identity block in its context, with the call's overhead taken out
    for layer, row in zip(space.layers, table.layers, strict=True):
        for choice, ms in zip(layer.choices, row, strict=True):
            if choice.is_identity(layer.in_channels, layer.out_channels, layer.stride):
                assert ms == 0.0
            else:
                module = choice.build(layer.in_channels, layer.out_channels, layer.stride, space.activation)
                assert ms == pytest.approx(1e-6 * sum(p.numel() for p in module.parameters()), abs=1e-12)
    assert table.scale == pytest.approx(1.0) and table.offset_ms == pytest.approx(1e3 * runtime.OVERHEAD_S)
    # the fit spans the space: the fewest-MAdds network (all skip) and the most (all ir_k3_e2) first, then random
    assert [r["arch"] for r in table.fit["rows"][:2]] == ["2-2-2", "1-1-1"] and table.fit["archs"] == 5
    for arch in [(0, 0, 0), (2, 2, 2), (1, 0, 2)]:
        net = build_child(space, arch, 4, 3)
        truth = 1e3 * runtime.OVERHEAD_S + 1e-6 * sum(p.numel() for p in net.parameters())
        assert table.predict(space, arch) == pytest.approx(truth, rel=1e-9)
    v = validate_table(table, space, runtime, count=6, seed=1)
    assert v["mdape_percent"] == pytest.approx(0.0, abs=1e-9) and v["kendall_tau"] == pytest.approx(1.0)
    assert {r["arch"] for r in v["rows"]}.isdisjoint(r["arch"] for r in table.fit["rows"])  # not the fit's networks
    # validate=N: other networks timed in the table's own rounds, none of the fit's
    with_table = build_table(space, CountingRuntime(), warmup=0, repeats=1, rounds=1, fit_archs=5, validate=4)
    v = with_table.validation
    assert v["archs"] == 4 and v["timed"] == "with the table" and v["mdape_percent"] == pytest.approx(0.0, abs=1e-9)
    assert {r["arch"] for r in v["rows"]}.isdisjoint(r["arch"] for r in with_table.fit["rows"])


def test_time_units_takes_the_median_of_repeats_and_rounds():
    now = [0.0]
    costs = iter([1, 100, 2, 3] * 2)  # one slow outlier per round, and warm-up calls that are not timed
    calls = []

    def run():
        calls.append(1)
        now[0] += next(costs) * 1e-3

    times = time_units({"a": run}, warmup=1, repeats=3, rounds=2, rng=random.Random(0), clock=lambda: now[0])
    assert len(calls) == 8 and times == {"a": pytest.approx(3.0)}  # median of (100, 2, 3) each round


def test_a_table_round_trips_through_its_file_and_refuses_damage(tmp_path):
    space = tiny_space()
    table = build_table(space, CountingRuntime(), warmup=0, repeats=1, rounds=1, fit_archs=3)
    path = table.save(tmp_path / "t.json")
    again = LatencyTable.load(path)
    assert again == table and again.predict(space, (1, 2, 0)) == table.predict(space, (1, 2, 0))
    data = json.loads(path.read_text())
    for name, change, message in [
        ("missing", None, "does not exist: build one with python latency.py"),
        ("text", "not json", "is not JSON"),
        ("other", {"format": "something"}, "is not a fairnas latency table"),
        ("newer", {**data, "version": 99}, "latency table of version 99; this fairnas reads version 1"),
        ("rows", {**data, "layers": data["layers"][:-1]}, "is a damaged latency table"),
        ("nan", {**data, "stem_ms": "NaN"}, "is a damaged latency table"),
        ("keys", {**data, "extra": 1}, "is a damaged latency table"),
    ]:
        bad = tmp_path / f"{name}.json"
        if change is not None:
            bad.write_text(change if isinstance(change, str) else json.dumps(change))
        with pytest.raises(ConfigError, match=message):
            LatencyTable.load(bad)


def test_a_table_of_another_space_or_input_is_refused():
    space = tiny_space()
    table = build_table(space, CountingRuntime(), warmup=0, repeats=1, rounds=1, fit_archs=0)
    table.check_matches(space, 8, 3, 4)
    with pytest.raises(
        ConfigError, match=r"with input \[3, 8, 8\], but this search's space 'tiny' has input \[3, 16, 16\]"
    ):
        table.check_matches(space, 16, 3, 4)
    other = tiny_space().__class__.create(**{**space.to_dict(), "choices": ["ir_k5_e1", "ir_k3_e2", "skip"]})
    with pytest.raises(ConfigError, match=r"with layer 0 \[4, 4, 1, \['ir_k3_e1'.*has layer 0 \[4, 4, 1, \['ir_k5_e1'"):
        table.check_matches(other, 8, 3, 4)


def test_torch_runtime_times_real_blocks_with_its_thread_count():
    space = tiny_space()
    before = torch.get_num_threads()
    table = build_table(space, TorchRuntime("cpu", threads=1), warmup=1, repeats=5, rounds=1, fit_archs=2)
    assert torch.get_num_threads() == before
    assert table.runtime == "torch" and table.runtime_version == torch.__version__ and table.threads == 1
    measured = [u for u in table.units if u["name"].startswith("layer")]
    assert len(measured) == sum(1 for lay in space.layers for c in lay.choices
                                if not c.is_identity(lay.in_channels, lay.out_channels, lay.stride))  # fmt: skip
    assert all(u["raw_ms"] > 0 for u in table.units) and table.predict(space, (0, 1, 2)) > 0


def test_latency_py_measures_a_table_in_onnxruntime_and_validates_it(tmp_path):
    conf = tmp_path / "conf" / "search_space"
    conf.mkdir(parents=True)
    space = tiny_space()
    (conf / "tiny.yaml").write_text(yaml.safe_dump({"_target_": "fairnas.models.SearchSpace.create",
                                                    "_convert_": "all", **space.to_dict()}))  # fmt: skip
    out = tmp_path / "run"
    proc = run_entry("latency.py", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "search_space=tiny", "warmup=2",
                     "repeats=5", "rounds=2", "fit_archs=2", "validate=2", f"hydra.run.dir={out}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = LatencyTable.load(out / "latency_table.json")
    assert table.runtime == "onnxruntime" and table.runtime_version == ort.__version__ and table.threads == 1
    assert table.device["type"] == "cpu" and table.device["name"] and table.fit["archs"] == 2
    assert table.validation["archs"] == 2 and -1 <= table.validation["kendall_tau"] <= 1
    with open(out / "validation.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(float(r["measured_ms"]) > 0 for r in rows)
    assert "search with it as search.py ckpt_path=... latency_table=" in proc.stderr + proc.stdout
    table.check_matches(space, 8, 3, 4)


# ---------------------------------------------------------------------------------- search with a table
def fake_table(space_name: str, tmp_path: Path) -> Path:
    """A table of a real space measured on the simulated runtime (exact, instant)."""
    table = build_table(load_space(space_name), CountingRuntime(), warmup=0, repeats=1, rounds=1, fit_archs=4)
    return table.save(tmp_path / f"{space_name}.json")


def test_search_py_with_a_latency_table_optimises_and_limits_the_predicted_latency(searched, tmp_path):
    ckpt = searched / "supernet" / "checkpoints" / "last.ckpt"
    path = fake_table("fairnas_mini", tmp_path)
    table, space = LatencyTable.load(path), load_space("fairnas_mini")
    common = [f"ckpt_path={ckpt}", f"latency_table={path}", "evaluator.bn_batches=2", "strategy.population=6",
              "strategy.generations=2"]  # fmt: skip
    free = tmp_path / "free"
    proc = run_entry("search.py", *common, f"hydra.run.dir={free}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(free / "evaluated.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:  # the table's prediction, nothing measured here
        assert float(r["latency_ms"]) == pytest.approx(table.predict(space, space.parse_arch(r["arch"])), rel=1e-12)
    assert "objectives: ['madds', 'latency_ms']" in proc.stderr + proc.stdout
    results = json.loads((free / "results.json").read_text())
    assert results["latency"]["source"] == "latency table" and results["latency"]["runtime"] == "simulated 1"
    # limited at the median: nothing over it on the front or as the best, and best.yaml says where latency came from
    limit = float(np.median([float(r["latency_ms"]) for r in rows]))
    limited = tmp_path / "limited"
    proc = run_entry("search.py", *common, f"strategy.max_latency_ms={limit}", f"hydra.run.dir={limited}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((limited / "best.yaml").read_text())
    assert best["latency"]["file"] == str(path) and best["limits"] == {"max_latency_ms": limit}
    assert best["best"]["latency_ms"] <= limit and all(e["latency_ms"] <= limit for e in best["front"])
    with open(limited / "evaluated.csv") as f:
        assert all(float(r["latency_ms"]) <= limit for r in csv.DictReader(f) if r["searched"] == "True")
    with open(limited / "pareto.csv") as f:
        assert "latency_ms" in next(csv.reader(f))
    from PIL import Image

    assert Image.open(limited / "pareto.png").size[0] > 1.5 * Image.open(searched / "search" / "pareto.png").size[0]
    # a strategy without objectives (random): its front weighs the predicted latency too
    rand = tmp_path / "random"
    proc = run_entry("search.py", f"ckpt_path={ckpt}", f"latency_table={path}", "evaluator.bn_batches=2",
                     "strategy=random", "strategy.num_samples=12", f"hydra.run.dir={rand}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(rand / "evaluated.csv") as f:
        points = [(float(r["acc1"]), float(r["madds"]), float(r["latency_ms"]), r["arch"]) for r in csv.DictReader(f)]
    undominated = {p[3] for p in points if not any(q[0] >= p[0] and q[1] <= p[1] and q[2] <= p[2] and q[:3] != p[:3]
                                                   for q in points)}  # fmt: skip
    with open(rand / "pareto.csv") as f:
        assert {r["arch"] for r in csv.DictReader(f)} == undominated


def test_search_py_refuses_a_table_it_cannot_use(searched, tmp_path):
    ckpt = searched / "supernet" / "checkpoints" / "last.ckpt"
    other = fake_table("nas_bench_macro", tmp_path)
    mini = fake_table("fairnas_mini", tmp_path)
    for args, message in [
        (
            [f"latency_table={other}"],
            "was measured for space 'nas_bench_macro' with input [3, 32, 32], but this "
            "search's space 'fairnas_mini' has input [1, 28, 28]",
        ),
        ([f"latency_table={mini}", "evaluator.latency=true"], "predicts latency and evaluator.latency=true measures"),
        ([f"latency_table={tmp_path / 'none.json'}"], "does not exist: build one with python latency.py"),
    ]:
        proc = run_entry("search.py", f"ckpt_path={ckpt}", "strategy=random", "strategy.num_samples=2", *args,
                         f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert message in proc.stderr


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"runtime": "tensorrt"}, "runtime='tensorrt': give one of ['onnxruntime', 'torch']"),
        ({"runtime": "torch", "device": "tpu"}, "device='tpu': give one of ['cpu', 'cuda']"),
        ({"runtime": "torch", "threads": 0}, "threads=0: give a whole number >= 1"),
    ],
)
def test_a_runtime_that_cannot_measure_is_refused(kwargs, message):
    from fairnas.deploy.latency import make_runtime

    with pytest.raises(ConfigError, match=re.escape(message)):
        make_runtime(**kwargs)
