"""NAS-Bench-Macro as a search space: exact parity with the benchmark file, keys, canonical keys."""

from __future__ import annotations

import gzip
import hashlib
import json

import numpy as np
import pytest
import torch
from conftest import load_space, run_entry
from torch.utils.flop_counter import FlopCounterMode

from fairnas.models import CostModel, Supernet, build_child
from fairnas.nas_bench import MACRO_FILE, arch_to_key, canonical_key, distinct_keys, key_to_arch, load_macro

# sha256 of the benchmark's JSON at xiusu/NAS-Bench-Macro@61a2bfc2 (fairnas/nas_bench/data/README.md).
MACRO_SHA256 = "686dee8363cc21cca8c1f321ad5749454f2d9b9ca5972682e137e539bc522297"


@pytest.fixture(scope="module")
def bench():
    return load_macro()


@pytest.fixture(scope="module")
def space():
    return load_space("nas_bench_macro")


def sample_keys(bench, n, seed=0):
    keys = sorted(bench)
    return [keys[i] for i in np.random.default_rng(seed).choice(len(keys), n, replace=False)]


def test_shipped_file_is_the_published_one(bench):
    with gzip.open(MACRO_FILE, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == MACRO_SHA256
    assert len(bench) == 3**8 and (MACRO_FILE.parent / "LICENSE").is_file()
    assert "Apache License" in (MACRO_FILE.parent / "LICENSE").read_text()


def test_space_follows_the_benchmark_order(space):
    assert (space.num_layers, space.num_choices) == (8, 3)
    assert space.parse_arch("0-2-0-1-2-1-0-0") == key_to_arch("02012100") == (0, 2, 0, 1, 2, 1, 0, 0)
    assert arch_to_key((0, 2, 0, 1, 2, 1, 0, 0)) == "02012100"
    assert space.describe_arch("0-1-2-0-0-0-0-0")[:3] == ["id", "ir_k3_e3", "ir_k5_e6"]
    assert [layer.stride for layer in space.layers] == [2, 1, 2, 1, 1, 2, 1, 1]
    assert [layer.out_channels for layer in space.layers] == [64, 64, 128, 128, 128, 256, 256, 256]


def test_cost_model_equals_the_file_for_every_key(bench, space):
    cost = CostModel.create(space)
    madds = {key: cost.madds(key_to_arch(key)) for key in bench}
    params = {key: cost.params(key_to_arch(key)) for key in bench}
    assert madds == {key: e.flops for key, e in bench.items()}
    assert params == {key: e.params for key, e in bench.items()}
    assert (madds["22222222"], params["22222222"]) == (105_660_928, 2_932_586)


def test_real_networks_of_a_sample_have_the_file_s_params_and_flops(bench, space):
    keys = sample_keys(bench, 20) + ["00000000", "22222222"]
    supernet = Supernet(space)
    x = torch.randn(1, 3, 32, 32)
    for key in keys:
        arch = key_to_arch(key)
        child = build_child(space, arch).eval()
        for net in (child, supernet.export(arch)):
            assert sum(p.numel() for p in net.parameters()) == bench[key].params, key
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            child(x)
        assert counter.get_total_flops() == 2 * bench[key].flops, key
    # Stride-1 identities are dropped from exports; the smallest network keeps its 3 projections.
    assert len(supernet.export(key_to_arch("00000000")).blocks) == 3
    assert len(build_child(space, key_to_arch("12102210")).blocks) == 6


def test_canonical_key_normalises_stride_1_identities_as_the_benchmark_does(bench, space):
    assert canonical_key("10200201") == "10200210"
    assert canonical_key("02012100") == "02012100"
    assert canonical_key("00101010") == "00110010"  # a stage's first layer (stride 2) never moves
    assert canonical_key((0, 0, 1, 0, 1, 0, 1, 0)) == "00110010"
    canon = distinct_keys(bench)
    assert len(canon) == 3969 and all(canonical_key(k) == k for k in canon)
    for key, entry in bench.items():
        same = bench[canonical_key(key)]
        assert (entry.test_acc, entry.params, entry.flops) == (same.test_acc, same.params, same.flops), key
    # A key and its canonical key build the same network: the same blocks in the same order.
    for key in sample_keys(bench, 30, seed=1):
        nets = [build_child(space, key_to_arch(k)) for k in (key, canonical_key(key))]
        shapes = [[tuple(p.shape) for p in net.parameters()] for net in nets]
        assert shapes[0] == shapes[1], key
    with pytest.raises(ValueError, match="expected 8 digits in 0..2"):
        canonical_key("0123")


def test_load_macro_reads_plain_json_and_rejects_other_files(tmp_path, bench):
    plain = tmp_path / "bench.json"
    plain.write_text(
        json.dumps({"00000000": {"test_acc": [1, 2, 3], "mean_acc": 2, "std": 1, "params": 5, "flops": 6}})
    )
    assert load_macro(plain)["00000000"].flops == 6
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_macro(tmp_path / "missing.json")
    plain.write_text(json.dumps({"00000000": {"acc": 1}}))
    with pytest.raises(ValueError, match="is not a NAS-Bench-Macro file"):
        load_macro(plain)


def test_train_py_reports_the_file_s_cost_for_22222222(tmp_path, bench):
    proc = run_entry(
        "train.py",
        "search_space=nas_bench_macro",
        "arch=2-2-2-2-2-2-2-2",
        "dataset=synthetic",
        "trainer.max_steps=1",
        "dataset.batch_size=8",
        "dataset.num_train=8",
        "dataset.num_val=8",
        "logger=none",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "results.json").read_text())
    assert (r["arch"], r["madds"], r["params"]) == (
        "2-2-2-2-2-2-2-2",
        bench["22222222"].flops,
        bench["22222222"].params,
    )
