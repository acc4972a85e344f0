"""The NAS-Bench-Macro ranking study: the benchmark file as ground truth, sampling, ceiling, end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import load_space, run_entry

from fairnas.analysis.ranking import kendall_tau
from fairnas.errors import ConfigError
from fairnas.nas_bench import canonical_key, key_to_arch, load_macro
from fairnas.study import BenchmarkGroundTruth, BenchmarkRankingStudy, RankingStudy, TrainedGroundTruth


@pytest.fixture(scope="module")
def space():
    return load_space("nas_bench_macro")


@pytest.fixture(scope="module")
def bench():
    return load_macro()


def study(tmp_path: Path, space, **kwargs) -> BenchmarkRankingStudy:
    return BenchmarkRankingStudy(str(tmp_path), space, "nas_bench_macro", bootstrap=50, **kwargs)


def test_all_distinct_networks_or_a_flops_stratified_sample(tmp_path: Path, space, bench) -> None:
    every = study(tmp_path / "all", space)
    archs = every.sample()
    keys = ["".join(a.split("-")) for a in archs]
    assert len(keys) == len(set(keys)) == 3969 and all(canonical_key(k) == k for k in keys)
    sampled = study(tmp_path / "some", space, sample_size=10, sample_seed=3)
    picked = ["".join(a.split("-")) for a in sampled.sample()]
    assert len(picked) == 10 and all(canonical_key(k) == k for k in picked)
    # One network per tenth of the distinct networks ordered by FLOPs.
    order = sorted(set(map(canonical_key, bench)), key=lambda k: (bench[k].flops, k))
    ranks = sorted(order.index(k) for k in picked)
    assert [r * 10 // len(order) for r in ranks] == list(range(10))
    assert study(tmp_path / "some", space, sample_size=10, sample_seed=99).sample() == sampled.sample()  # file kept
    assert study(tmp_path / "other", space, sample_size=10, sample_seed=4).sample() != sampled.sample()  # seeded draw


def test_ground_truth_is_the_file_and_the_ceiling_scores_each_run_against_the_others(tmp_path, space, bench) -> None:
    s = study(tmp_path, space, sample_size=40)
    s.dir.mkdir(parents=True, exist_ok=True)
    assert s.ground_truth() == {"skipped": 0, "ran": 0, "read": 40}
    table = s.ground_truth_table()
    for row in table.rows:
        entry = bench[row["key"]]
        assert [row[f"seed{i}"] for i in range(3)] == [a / 100 for a in entry.test_acc]
        assert (row["madds"], row["params"]) == (entry.flops, entry.params)
    with (tmp_path / "ground_truth.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 40
    ceiling = s.ceiling(table)
    run0, others = table["seed0"], table[["seed1", "seed2"]].mean(axis=1)
    assert ceiling["one_vs_rest"]["seed0_vs_mean_of_others"]["kendall_tau"] == pytest.approx(kendall_tau(run0, others))
    assert ceiling["halves"] == [[0], [1]]
    assert json.loads((tmp_path / "ceiling.json").read_text())["one_vs_rest"] == ceiling["one_vs_rest"]


def test_a_study_of_the_wrong_space_or_with_non_canonical_keys_is_refused(tmp_path: Path, space) -> None:
    with pytest.raises(ConfigError, match="needs search_space=nas_bench_macro"):
        study(tmp_path, load_space("fairnas_mini"))
    with pytest.raises(ConfigError, match="does not apply to a benchmark study"):
        study(tmp_path, space, seeds=[0, 1])
    (tmp_path / "archs.txt").write_text("0-0-1-0-1-0-1-0\n")  # key 00101010: its canonical key is 00110010
    with pytest.raises(ConfigError, match="not canonical benchmark keys .*canonical 0-0-1-1-0-0-1-0"):
        study(tmp_path, space).sample()


def test_the_benchmark_study_is_a_ranking_study_given_the_benchmark_as_its_source(tmp_path: Path, space) -> None:
    preset = study(tmp_path / "preset", space, sample_size=12, sample_seed=2, supernet_seeds=[0, 1])
    source = BenchmarkGroundTruth(sample_size=12, sample_seed=2)
    given = RankingStudy(str(tmp_path / "given"), space, "nas_bench_macro", source=source, supernet_seeds=[0, 1],
                         tuning_fraction=0.2, bootstrap=50)  # fmt: skip
    assert given.sample() == preset.sample() and given.seeds == [0, 1, 2]
    assert given.ground_truth_table().rows == preset.ground_truth_table().rows
    assert given._design() == preset._design() and given.supernet_runs == preset.supernet_runs
    # Stand-alone settings belong to a trained ground truth: refused beside another source, or beside their own.
    with pytest.raises(ConfigError, match=r"study.seeds, study.probe do not apply to a benchmark study"):
        RankingStudy(str(tmp_path), space, "nas_bench_macro", source=source, seeds=[0, 1], probe=4)
    with pytest.raises(ConfigError, match=r"study.seeds: the study was given its ground truth \(TrainedGroundTruth\)"):
        RankingStudy(str(tmp_path), space, "nas_bench_macro", source=TrainedGroundTruth(), seeds=[0, 1])
    with pytest.raises(ConfigError, match="needs search_space=nas_bench_macro"):
        RankingStudy(str(tmp_path), load_space("fairnas_mini"), "fairnas_mini", source=source)


def test_the_tuning_split_is_declared_once(tmp_path: Path, space) -> None:
    s = study(tmp_path, space, sample_size=20, tuning_fraction=0.2)
    s.dir.mkdir(parents=True, exist_ok=True)
    tuning, holdout = s.tuning_split()
    assert len(tuning) == 4 and len(holdout) == 16 and not set(tuning) & set(holdout)
    assert sorted(tuning + holdout) == sorted(s.sample())
    assert study(tmp_path, space, sample_size=20, tuning_fraction=0.5).tuning_split() == (tuning, holdout)


def test_the_miniature_benchmark_study_runs_end_to_end(tmp_path: Path, bench) -> None:
    out = tmp_path / "study"
    common = ["study=nas_bench_macro_tiny", f"study.out_dir={out}", "parallel=2", "threads_per_job=1"]
    done = run_entry("study.py", *common, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    commands = (out / "commands.sh").read_text().splitlines()
    # Nothing trained stand-alone: two supernets (sf, ef) and their two one-shot evaluations.
    assert len(commands) == 4 and not any("arch=" in c for c in commands)
    assert sum("sampler=sf seed=0" in c for c in commands) == 1 and sum("sampler=ef seed=0" in c for c in commands) == 1
    results = json.loads((out / "report" / "results.json").read_text())
    assert [row["predictor"] for row in results["ranking"]] == [
        "sf_seed0", "ef_seed0", "MAdds (proxy)", "params (proxy)", "ceiling: stand-alone seeds [0] vs [1]"
    ]  # fmt: skip
    assert all(row["n"] == 6 for row in results["ranking"])
    assert [p["comparison"] for p in results["paired"]][0] == "tau(sf_seed0) - tau(ef_seed0)"
    holdout = json.loads((out / "report" / "holdout" / "results.json").read_text())
    assert all(row["n"] == 5 for row in holdout["ranking"])  # 6 networks less the 20% tuning subset (1)
    with (out / "report" / "scores.csv").open() as f:
        scores = list(csv.DictReader(f))
    assert len(scores) == 6 and set(scores[0]) >= {"key", "oneshot_sf_seed0", "oneshot_ef_seed0"}
    for row in scores:
        assert canonical_key(row["key"]) == row["key"]
        assert float(row["benchmark_mean_acc"]) == pytest.approx(np.mean(bench[row["key"]].test_acc) / 100)
        assert key_to_arch(row["key"]) == tuple(int(c) for c in row["arch"].split("-"))
    assert "from NAS-Bench-Macro" in (out / "report" / "report.md").read_text()

    again = run_entry("study.py", *common, timeout=600)  # resumable: every run is skipped
    assert again.returncode == 0, again.stderr[-3000:]
    assert len((out / "commands.sh").read_text().splitlines()) == 4


@pytest.mark.parametrize(("preset", "size"), [("nas_bench_macro", 300), ("nas_bench_macro_full", None)])
def test_the_study_presets_compose_on_the_benchmark_space(preset: str, size) -> None:
    from conftest import ROOT
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    overrides = [f"study={preset}", "study.space_name=nas_bench_macro"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("study", overrides=[*overrides, "study.data_root=/data/cifar10-jpeg"])
        missing = compose("study", overrides=overrides)
    space = instantiate(cfg.search_space)
    s = instantiate(cfg.study, _partial_=True)(space=space)
    assert space.name == "nas_bench_macro" and s.source.sample_size == size
    assert list(s.supernet_runs) == ["sf_seed0", "sf_seed1", "ef_seed0", "ef_seed1"]
    assert "dataset=cifar10_folder" in s.train_overrides and s.train_overrides[-1] == "dataset.root=/data/cifar10-jpeg"
    with pytest.raises(MissingMandatoryValue):
        OmegaConf.to_container(missing.study, resolve=True, throw_on_missing=True)
