"""The ranking monitor (callbacks=ranking): what it logs is what its files and the ground truth give,
it never changes what is trained, it resumes with the run, and a ground truth that does not fit is
one clear error before training."""

from __future__ import annotations

import csv
import math
import shutil

import numpy as np
import pytest
from conftest import COMMON, assert_same_training, ckpt, load_space, run_entry, tiny_space

from fairnas.analysis.ranking import kendall_tau, partial_kendall_tau, spearman_rho, top_k_precision
from fairnas.errors import ConfigError
from fairnas.models import CostModel
from fairnas.nas_bench.macro import canonical_key, key_to_arch, load_macro
from fairnas.ranking import choose_archs, fairnas_mini, from_csv, load_ground_truth, nas_bench_macro
from fairnas.utils.wandb_offline import read_offline_run

# 2 epochs of 4 sf steps (6 paths each): 48 passes; an evaluation at 0, every 12 passes and at the end.
R = "callbacks.ranking."
MONITOR = ["callbacks=ranking", f"{R}every_n_paths=12", f"{R}at_start=true", f"{R}num_archs=10", f"{R}bn_batches=1",
           f"{R}n_boot=200"]  # fmt: skip


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def truth_csv(path, n=16, seed=0):
    """A ground truth of fairnas_mini architectures (random ones, with made-up accuracies)."""
    rng = np.random.default_rng(seed)
    archs = {tuple(int(c) for c in rng.integers(0, 6, 8)) for _ in range(n)}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "accuracy"])
        for a in sorted(archs):
            w.writerow(["-".join(map(str, a)), f"{rng.uniform(0.5, 0.9):.4f}"])
    return path


# ----------------------------------------------------------------- ground truths
def test_the_built_in_tables_hold_what_their_sources_say():
    mini = fairnas_mini()
    assert len(mini.accuracy) == 40 and mini.space == "fairnas_mini" and mini.datasets == ("fashion_mnist",)
    assert mini((0, 0, 0, 0, 0, 0, 0, 0)) == pytest.approx(0.90515, abs=1e-5)  # the study's mean of 12 seeds
    bench, macro = load_macro(), nas_bench_macro()
    assert len(macro.accuracy) == 3969  # one entry per distinct network
    # A key whose identities sit mid-stage is the network of its canonical key.
    assert canonical_key("10200201") == "10200210"
    assert macro(key_to_arch("10200201")) == macro(key_to_arch("10200210")) == bench["10200210"].mean_acc / 100


def test_a_ground_truth_that_does_not_fit_the_run_is_one_clear_error(tmp_path):
    mini, macro_space = load_space("fairnas_mini"), load_space("nas_bench_macro")
    with pytest.raises(ConfigError, match="holds architectures of the space 'nas_bench_macro', but this run trains "
                                          "'fairnas_mini'.*train search_space=nas_bench_macro"):  # fmt: skip
        nas_bench_macro().check(mini, "cifar10")
    with pytest.raises(ConfigError, match="holds for cifar10 or cifar10_folder, but this run trains on 'synthetic'"):
        nas_bench_macro().check(macro_space, "synthetic")
    nas_bench_macro().check(macro_space, "synthetic", check_dataset=False)  # the user's own copy of the data
    with pytest.raises(ConfigError, match="but this run's data has 100 classes, 32x32 images and 3 channels"):
        nas_bench_macro().check(macro_space, "cifar10_folder", shape=(100, 32, 3))  # a folder of other images
    with pytest.raises(ConfigError, match="no built-in ground truth for the space 'tiny'.*ground_truth=<file>"):
        load_ground_truth("auto", tiny_space())
    bad = tmp_path / "bad.csv"
    bad.write_text("arch,accuracy\n0-0-0-0-0-0-0-0,0.9\n0-0-0-0-0-0-0-9,0.8\n")
    with pytest.raises(ConfigError, match="line 3: '0-0-0-0-0-0-0-9' is not an architecture of the space"):
        from_csv(bad, mini)
    bad.write_text("arch,acc\n0-0-0-0-0-0-0-0,0.9\n")
    with pytest.raises(ConfigError, match="needs the columns arch and accuracy \\(arch, acc found\\).*truth_column"):
        from_csv(bad, mini)
    assert from_csv(bad, mini, column="acc")((0,) * 8) == 0.9
    bad.write_text("arch,accuracy\n0-0-0-0-0-0-0-0,0.9\n0-0-0-0-0-0-0-0,0.8\n")
    with pytest.raises(ConfigError, match="listed twice with different accuracies"):
        from_csv(bad, mini)
    with pytest.raises(ConfigError, match="does not exist: give a CSV file with the columns arch,accuracy"):
        from_csv(tmp_path / "none.csv", mini)
    table = from_csv(truth_csv(tmp_path / "t.csv"), mini, dataset="fashion_mnist")
    with pytest.raises(ConfigError, match="holds for fashion_mnist, but this run trains on 'mnist'"):
        table.check(mini, "mnist")


def test_the_scored_architectures_are_distinct_spread_over_cost_and_seeded():
    space = load_space("nas_bench_macro")
    cost = CostModel.create(space)
    truth = nas_bench_macro()
    a, b, c = (choose_archs(truth, cost, 30, s) for s in (0, 0, 1))
    assert a == b and a != c and len(set(a)) == 30
    madds = sorted(cost.madds(x) for x in truth.accuracy)
    picked = [cost.madds(x) for x in a]
    assert picked == sorted(picked)
    # one per cost bin of 3969/30 networks: the cheapest pick is in the cheapest bin, the dearest in the last
    assert picked[0] <= madds[len(madds) // 30] and picked[-1] >= madds[-(len(madds) // 30) - 1]
    assert len(choose_archs(fairnas_mini(), CostModel.create(load_space("fairnas_mini")), None, 0)) == 40


# ----------------------------------------------------------------- through train.py
@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    """One run with the monitor (every logger) and the same run without it."""
    root = tmp_path_factory.mktemp("ranking")
    truth = truth_csv(root / "truth.csv")
    runs = {}
    for name, extra in (
        ("with", [*MONITOR, f"callbacks.ranking.ground_truth={truth}", "logger=[csv,tensorboard,wandb]"]),
        ("without", []),
    ):
        runs[name] = root / name
        proc = run_entry("train.py", *COMMON, *extra, f"hydra.run.dir={runs[name]}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    return runs, truth


def test_the_monitor_never_changes_what_is_trained(monitored):
    runs, _ = monitored
    assert_same_training(runs["with"] / "checkpoints" / "last.ckpt", runs["without"] / "checkpoints" / "last.ckpt")
    assert (runs["with"] / "ranking" / "tau.png").read_bytes()[:4] == b"\x89PNG"


def test_the_logged_tau_is_what_the_csv_and_the_ground_truth_give(monitored):
    runs, truth_file = monitored
    truth = {r["arch"]: float(r["accuracy"]) for r in read_csv(truth_file)}
    rows = read_csv(runs["with"] / "ranking" / "archs.csv")
    evaluations = sorted({int(r["evaluation"]) for r in rows})
    assert [int(r["paths"]) for r in rows if r["arch"] == rows[0]["arch"]] == [0, 12, 24, 36, 48]
    recomputed = []
    for n in evaluations:
        mine = [r for r in rows if int(r["evaluation"]) == n]
        assert len(mine) == 10 and len({r["arch"] for r in mine}) == 10
        assert all(float(r["truth"]) == truth[r["arch"]] for r in mine)
        oneshot, true = [float(r["oneshot"]) for r in mine], [truth[r["arch"]] for r in mine]
        madds = [float(r["madds"]) for r in mine]
        recomputed.append({
            "rank/kendall_tau": kendall_tau(oneshot, true), "rank/spearman": spearman_rho(oneshot, true),
            "rank/partial_tau": partial_kendall_tau(oneshot, true, madds),
            "rank/top_k_precision": top_k_precision(oneshot, true, 5),
            "rank/madds_kendall_tau": kendall_tau(madds, true),
            "rank/paths": float(mine[0]["paths"]),
        })  # fmt: skip
    # Lightning's CSV logger: one row per evaluation, with rank/paths as a column
    logged = [r for r in read_csv(runs["with"] / "csv" / "metrics.csv") if r.get("rank/kendall_tau")]
    assert len(logged) == len(recomputed)
    for row, want in zip(logged, recomputed, strict=True):
        for key, value in want.items():
            assert _same(float(row[key]), value), (key, row[key], value)
        low, high = float(row["rank/kendall_tau_low"]), float(row["rank/kendall_tau_high"])
        assert low <= high or math.isnan(want["rank/kendall_tau"])  # NaN where all one-shot accuracies tie
    # TensorBoard: the same series, with the passes as its step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((runs["with"] / "tensorboard").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    scalars = events.Scalars("rank/kendall_tau")
    assert [s.step for s in scalars] == [0, 12, 24, 36, 48]
    assert all(_same(s.value, w["rank/kendall_tau"], rel=1e-6) for s, w in zip(scalars, recomputed))  # float32
    # W&B (offline run read back): the series, against rank/paths
    run = read_offline_run(next((runs["with"] / "wandb").glob("offline-run-*")))
    history = [h for h in run.history if "rank/kendall_tau" in h]
    assert [h["rank/paths"] for h in history] == [0, 12, 24, 36, 48]
    assert [h["trainer/global_step"] for h in history] == [0, 1, 3, 5, 7]  # the batch whose end it followed
    for h, want in zip(history, recomputed, strict=True):
        assert _same(h["rank/kendall_tau"], want["rank/kendall_tau"])


def _same(a: float, b: float, rel: float = 1e-9) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=rel, abs=1e-12)


def test_a_resumed_run_continues_the_same_curve(monitored, tmp_path):
    """SIGTERM after step 2, an evaluation point (12 passes): the evaluation is in the saved state, and the
    continued run writes the curve of the uninterrupted one."""
    runs, truth = monitored
    args = [*COMMON, *MONITOR, f"callbacks.ranking.ground_truth={truth}", f"hydra.run.dir={tmp_path}"]
    first = run_entry("train.py", *args, "+callbacks.sigterm._target_=conftest.SigtermAt", "+callbacks.sigterm.step=2")
    assert first.returncode == 143, first.stderr[-3000:]
    assert [int(r["paths"]) for r in read_csv(tmp_path / "ranking" / "metrics.csv")] == [0, 12]
    second = run_entry("train.py", *args, "ckpt_path=last")
    assert second.returncode == 0, second.stderr[-3000:]
    assert (tmp_path / "ranking" / "archs.csv").read_text() == (runs["with"] / "ranking" / "archs.csv").read_text()
    assert ckpt(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 8


def test_under_ddp_the_ranks_share_the_work_and_log_what_the_checkpoint_gives(tmp_path):
    """2 processes: each scores half of the architectures; the gathered accuracies are those the search's
    evaluator gives the final checkpoint, with the same calibration."""
    import torch

    from fairnas.run import load_supernet
    from fairnas.search import DeviceBatches, SupernetEvaluator

    truth = truth_csv(tmp_path / "truth.csv")
    proc = run_entry("train.py", *COMMON, *MONITOR, f"callbacks.ranking.ground_truth={truth}", "trainer.devices=2",
                     "trainer.accelerator=cpu", f"{R}at_start=false", f"{R}every_n_paths=null",
                     f"hydra.run.dir={tmp_path / 'run'}", timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_csv(tmp_path / "run" / "ranking" / "archs.csv")
    # every epoch: 2 steps of 6 paths (each rank trains them on its half of the batches), as train/paths counts
    assert sorted({int(r["paths"]) for r in rows}) == [12, 24]
    final = {r["arch"]: float(r["oneshot"]) for r in rows if int(r["paths"]) == 24}
    supernet, record = load_supernet(tmp_path / "run" / "checkpoints" / "last.ckpt")
    data = record.data.build([])
    data.setup("fit")
    cpu = torch.device("cpu")
    evaluator = SupernetEvaluator(
        supernet, DeviceBatches(data.calibration_dataloader(1, seed=0), None, cpu),
        DeviceBatches(data.val_dataloader(), None, cpu), CostModel.create(supernet.space, 8, 10, 1),
    )  # fmt: skip
    archs = [tuple(int(c) for c in a.split("-")) for a in final]
    assert [r["acc1"] for r in evaluator.evaluate_many(archs)] == list(final.values())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["search_space=nas_bench_macro"], "holds for cifar10 or cifar10_folder, but this run trains on 'synthetic'"),
        ([], "ground truth 'fairnas_mini' holds for fashion_mnist, but this run trains on 'synthetic'"),
        (["arch=0-0-0-0-0-0-0-0"], "callbacks=ranking scores architectures with a supernet, but arch=..."),
        (["callbacks.ranking.num_archs=0"], "callbacks.ranking.num_archs must be a positive integer or null, got 0"),
    ],
)
def test_a_monitor_that_cannot_work_stops_the_run_before_training(tmp_path, overrides, message):
    proc = run_entry("train.py", *COMMON, "callbacks=ranking", *overrides, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_a_users_table_of_the_right_data_is_accepted(tmp_path):
    truth = truth_csv(tmp_path / "truth.csv")
    shutil.copy(truth, tmp_path / "copy.csv")
    # A step budget alone (Lightning's max_epochs becomes -1): every 2nd epoch's end and the end, nothing else.
    proc = run_entry("train.py", *COMMON, *MONITOR, f"callbacks.ranking.ground_truth={tmp_path / 'copy.csv'}",
                     f"{R}truth_dataset=synthetic", "trainer.max_steps=6", "trainer.max_epochs=null",
                     f"{R}at_start=false", f"{R}every_n_paths=null", f"{R}every_n_epochs=2",
                     f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [int(r["paths"]) for r in read_csv(tmp_path / "run" / "ranking" / "metrics.csv")] == [36]


def test_the_sweep_report_shows_the_final_tau_and_the_curves(monitored, tmp_path):
    from fairnas.cli.report import main as report_main

    runs, _ = monitored
    assert report_main([str(runs["with"]), str(runs["without"]), "--out", str(tmp_path)]) == 0
    final = read_csv(runs["with"] / "ranking" / "metrics.csv")[-1]
    text = (tmp_path / "report.md").read_text()
    assert "## Ranking during training (callbacks=ranking)" in text
    section = text.split("## Ranking during training (callbacks=ranking)")[1]
    (row,) = [line for line in section.splitlines() if line.endswith("| 48 |")]  # the monitored job: 48 passes
    assert f"{float(final['kendall_tau']):.4g}" in row and f"[{float(final['kendall_tau_low']):.3f}, " in row
    assert (tmp_path / "report_ranking.png").read_bytes()[:4] == b"\x89PNG"
    table = read_csv(tmp_path / "report.csv")
    assert sorted(r["rank/kendall_tau mean"] != "" for r in table) == [False, True]
