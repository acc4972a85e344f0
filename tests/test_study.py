"""The ranking study: job runner (skip, resume, failures), the ceiling, and the miniature study end to end."""

from __future__ import annotations

import concurrent.futures.thread
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT, _run_as_main, load_space, run_entry
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from scipy import stats

from fairnas.analysis.ceiling import halving_taus, predicted_ceiling
from fairnas.errors import ConfigError
from fairnas.study import Job, JobFailed, RankingStudy, run_jobs, runner

# A stand-in for train.py: writes results.json into hydra.run.dir, or fails when asked to.
FAKE_TRAIN = """
import json, sys
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:])
if args.get("fail") == "1":
    print("boom", file=sys.stderr)
    sys.exit(3)
out = Path(args["hydra.run.dir"])
(out / "results.json").write_text(json.dumps(args))
"""


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    (tmp_path / "fake.py").write_text(FAKE_TRAIN)
    return tmp_path


def test_jobs_run_in_parallel_skip_finished_ones_and_log_their_commands(fake_root: Path):
    jobs = [Job("fake.py", fake_root / "runs" / str(i), (f"x={i}",)) for i in range(3)]
    commands = fake_root / "commands.sh"
    assert run_jobs(jobs, parallel=2, threads_per_job=1, root=fake_root, commands_file=commands) == {
        "skipped": 0,
        "ran": 3,
    }
    assert json.loads((fake_root / "runs" / "1" / "results.json").read_text())["x"] == "1"
    assert commands.read_text().splitlines()[0] == f"python fake.py x=0 hydra.run.dir={fake_root / 'runs' / '0'}"
    again = [*jobs, Job("fake.py", fake_root / "runs" / "3", ("x=3",))]
    assert run_jobs(again, root=fake_root, commands_file=commands) == {"skipped": 3, "ran": 1}
    assert len(commands.read_text().splitlines()) == 4  # only what ran is logged


def test_a_failing_job_does_not_stop_the_others_and_is_named(fake_root: Path):
    jobs = [Job("fake.py", fake_root / "bad", ("fail=1",)), Job("fake.py", fake_root / "good", ())]
    with pytest.raises(JobFailed, match=r"1 of 2 runs failed:\n  .*bad \(exit code 3; see its console.log\)"):
        run_jobs(jobs, root=fake_root)
    assert (fake_root / "good" / "results.json").is_file()
    assert "boom" in (fake_root / "bad" / "console.log").read_text()
    with pytest.raises(ConfigError, match="must be >= 1"):
        run_jobs(jobs, parallel=0, root=fake_root)


def test_a_job_rerun_after_a_failure_or_an_interruption_is_listed_once_without_its_checkpoint(fake_root: Path):
    commands = fake_root / "commands.sh"
    failing = Job("fake.py", fake_root / "bad", ("fail=1",), resumable=True)
    for _ in range(2):
        with pytest.raises(JobFailed):
            run_jobs([failing], root=fake_root, commands_file=commands)
    (fake_root / "bad" / "checkpoints").mkdir()
    (fake_root / "bad" / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(JobFailed):
        run_jobs([failing], root=fake_root, commands_file=commands)
    assert commands.read_text().splitlines() == [f"python fake.py fail=1 hydra.run.dir={fake_root / 'bad'}"]


def test_an_interrupted_training_job_resumes_from_its_last_checkpoint(tmp_path: Path):
    job = Job("train.py", tmp_path / "run", ("arch=0-0",), resumable=True)
    assert not any(a.startswith("ckpt_path=") for a in job.argv(sys.executable, ROOT))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
    argv = job.argv(sys.executable, ROOT)
    assert argv[-2:] == [
        f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    assert not any(a.startswith("ckpt_path=") for a in Job("search.py", tmp_path / "run").argv(sys.executable, ROOT))


def test_jobs_can_run_through_a_hydra_launcher_into_their_own_run_directory(tmp_path: Path):
    # launcher=slurm does the same through submitit; Hydra's basic launcher runs the job here.
    run = tmp_path / "runs" / "sf"
    overrides = ("dataset=synthetic", "search_space.input_size=8", "dataset.num_train=32", "dataset.num_val=16",
                 "dataset.batch_size=16", "trainer.max_steps=1", "system.val_archs=1", "system.val_bn_batches=1",
                 "logger=none")  # fmt: skip
    job = Job("train.py", run, overrides, resumable=True)
    commands = tmp_path / "commands.sh"
    assert run_jobs([job], root=ROOT, commands_file=commands, launcher="basic", threads_per_job=1) == {
        "skipped": 0,
        "ran": 1,
    }
    assert json.loads((run / "results.json").read_text())["global_step"] == 1
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "0").exists()
    line = commands.read_text().strip()
    assert line.startswith("python train.py --multirun hydra/launcher=basic dataset=synthetic")
    assert line.endswith(f"hydra.sweep.dir={run} hydra.sweep.subdir=.")
    assert run_jobs([job], root=ROOT, launcher="basic") == {"skipped": 1, "ran": 0}


def test_a_study_rerun_with_another_recipe_is_refused_instead_of_reusing_the_old_runs(fake_root: Path):
    (fake_root / "train.py").write_text(FAKE_TRAIN)
    space = load_space("fairnas_mini")

    def study(*overrides: str) -> RankingStudy:
        return RankingStudy(str(fake_root / "study"), space, "fairnas_mini", train_overrides=overrides, sample_size=2,
                            seeds=[0, 1], root=str(fake_root))  # fmt: skip

    assert study("dataset=synthetic", "trainer.max_steps=4").ground_truth() == {"skipped": 0, "ran": 4}
    runs = sorted((fake_root / "study" / "ground_truth").glob("*/seed*"))
    recipe = json.loads((runs[0] / "job.json").read_text())
    assert recipe["script"] == "train.py" and "trainer.max_steps=4" in recipe["overrides"]
    stamps = {run: (run / "results.json").read_bytes() for run in runs}
    with pytest.raises(ConfigError) as err:
        study("dataset=synthetic", "trainer.max_steps=8").ground_truth()
    assert "4 run(s) of this study were made with other settings than now" in str(err.value)
    assert "removed ['trainer.max_steps=4'], added ['trainer.max_steps=8']" in str(err.value)
    assert "study.out_dir=" in str(err.value)
    assert {run: (run / "results.json").read_bytes() for run in runs} == stamps  # nothing rerun or reused
    assert study("dataset=synthetic", "trainer.max_steps=4").ground_truth() == {"skipped": 4, "ran": 0}
    # A finished run from before recipes were recorded is reused as it is (it cannot be checked).
    (runs[0] / "job.json").unlink()
    with pytest.raises(ConfigError, match="3 run"):
        study("dataset=synthetic", "trainer.max_steps=8").ground_truth()


def _fake_ground_truth(study: RankingStudy, accs: np.ndarray) -> None:
    """Writes the results.json files stand-alone runs would leave (accs: archs x seeds)."""
    for arch, row in zip(study.sample(), accs):
        for seed, acc in zip(study.seeds, row):
            run = study.standalone_dir(arch, seed)
            run.mkdir(parents=True)
            (run / "results.json").write_text(json.dumps({"val/acc": acc, "madds": 1, "params": 2}))


def test_the_ceiling_compares_seed_halves_and_matches_scipy(tmp_path: Path):
    study = RankingStudy(str(tmp_path), load_space("fairnas_mini"), "fairnas_mini", sample_size=12, seeds=[0, 1, 2, 3],
                         bootstrap=200)  # fmt: skip
    rng = np.random.default_rng(0)
    accs = np.linspace(0.8, 0.9, 12)[:, None] + rng.normal(scale=0.01, size=(12, 4))
    with pytest.raises(ConfigError, match="run the ground_truth stage first"):
        study.ceiling()
    _fake_ground_truth(study, accs)
    ceiling = study.ceiling()
    assert ceiling["halves"] == [[0, 1], [2, 3]] and ceiling["n"] == 12
    expected = stats.kendalltau(accs[:, :2].mean(axis=1), accs[:, 2:].mean(axis=1)).statistic
    assert ceiling["kendall_tau"] == pytest.approx(expected)
    assert ceiling["kendall_tau_low"] <= ceiling["kendall_tau"] <= ceiling["kendall_tau_high"]
    assert ceiling["seed_std"] == pytest.approx(np.sqrt(np.mean(accs.var(axis=1, ddof=1))))
    assert json.loads((tmp_path / "ceiling.json").read_text())["kendall_tau"] == pytest.approx(expected)
    # The three ways of splitting 4 seeds in two, the pre-declared one among them.
    splits = [([0, 1], [2, 3]), ([0, 2], [1, 3]), ([0, 3], [1, 2])]
    taus = [stats.kendalltau(accs[:, a].mean(axis=1), accs[:, b].mean(axis=1)).statistic for a, b in splits]
    halvings = ceiling["all_halvings"]
    assert halvings["count"] == 3 and halvings["exhaustive"] and halvings["seeds_per_half"] == 2
    assert halvings["kendall_tau_mean"] == pytest.approx(np.mean(taus))
    assert (halvings["kendall_tau_min"], halvings["kendall_tau_max"]) == pytest.approx((min(taus), max(taus)))
    assert np.allclose(study.ground_truth_table().mean, accs.mean(axis=1))


def test_the_supernets_stage_refuses_to_train_below_the_ceiling_gate(tmp_path: Path, monkeypatch):
    space = load_space("fairnas_mini")
    rng = np.random.default_rng(0)
    truth = np.linspace(0.8, 0.9, 12)[:, None]
    noisy = RankingStudy(str(tmp_path / "noisy"), space, "fairnas_mini", sample_size=12, seeds=[0, 1], bootstrap=50,
                         min_ceiling=0.7)  # fmt: skip
    _fake_ground_truth(noisy, truth + rng.normal(scale=0.1, size=(12, 2)))
    with pytest.raises(ConfigError, match=r"ceiling is Kendall tau .* below study.min_ceiling=0.7.*min_ceiling=null"):
        noisy.supernets()
    assert not (tmp_path / "noisy" / "supernets").exists()
    clean = RankingStudy(str(tmp_path / "clean"), space, "fairnas_mini", sample_size=12, seeds=[0, 1], bootstrap=50,
                         min_ceiling=0.7)  # fmt: skip
    _fake_ground_truth(clean, truth + rng.normal(scale=1e-4, size=(12, 2)))
    launched = []
    monkeypatch.setattr(clean, "launch", lambda jobs: launched.extend(jobs) or {"ran": len(jobs), "skipped": 0})
    clean.supernets()
    assert [job.run_dir.name for job in launched] == ["sf"]
    with pytest.raises(ConfigError, match="min_ceiling is a Kendall tau"):
        RankingStudy(str(tmp_path), space, "fairnas_mini", min_ceiling=7)


def test_the_sample_is_written_once_and_then_read_back(tmp_path: Path):
    space = load_space("fairnas_mini")
    first = RankingStudy(str(tmp_path), space, "fairnas_mini", sample_size=6).sample()
    assert len(first) == 6 and (tmp_path / "archs.txt").read_text().split() == first
    # A resumed study keeps its architectures even if the preset's size changed meanwhile.
    assert RankingStudy(str(tmp_path), space, "fairnas_mini", sample_size=9).sample() == first
    with pytest.raises(ConfigError, match="distinct seeds"):
        RankingStudy(str(tmp_path), space, "fairnas_mini", seeds=[0, 0])
    with pytest.raises(ConfigError, match="unknown stage"):
        RankingStudy(str(tmp_path), space, "fairnas_mini").run(["train"])


def _forked_call(argv: list[str], *, cwd: Path, env: dict[str, str], stdout, stderr) -> int:
    """The runner's ``subprocess.call``, with ``python <script> args...`` run in a fork of this process.

    The job is the same ``train.py`` / ``search.py`` run with the same arguments, environment and
    working directory, its output in its ``console.log``; only the 6-7 s a new interpreter spends
    importing torch, Lightning and Hydra is saved (as conftest's ``run_entry`` saves them). New
    interpreters are what test_benchmark_study's end-to-end study and the launcher test above start.
    """
    assert stderr is subprocess.STDOUT, "the runner sends a job's stderr to its console.log"
    _python, script, *args = argv
    for stream in (stdout, sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:  # the job: never returns
        code = 1
        try:
            # Forked from the study's runner: not in its Hydra run, nor waiting at exit for its worker threads.
            GlobalHydra.instance().clear()
            concurrent.futures.thread._threads_queues.clear()  # type: ignore[attr-defined]
            console = stdout.fileno()
            code = _run_as_main(Path(script), args, cwd=Path(cwd), env=env, out=console, err=console, foreground=False)
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_the_miniature_study_runs_end_to_end_and_resumes(tmp_path: Path, monkeypatch):
    if hasattr(os, "fork"):  # the study process is a fork of this one (run_entry): it starts its jobs so too
        monkeypatch.setattr(runner, "subprocess", SimpleNamespace(call=_forked_call, STDOUT=subprocess.STDOUT))
    out = tmp_path / "study"
    # The preset on 8x8 images instead of 28x28, in the study's space and in every run it starts.
    small = "search_space.input_size=8"
    train = [*OmegaConf.load(ROOT / "conf" / "study" / "ranking_tiny.yaml").train_overrides, small]
    runs = f"study.train_overrides=[{','.join(map(repr, train))}]"
    common = ["study=ranking_tiny", f"study.out_dir={out}", small, runs, "parallel=2", "threads_per_job=1"]
    done = run_entry("study.py", *common, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    report = out / "report"
    results = json.loads((report / "results.json").read_text())
    predictors = [row["predictor"] for row in results["ranking"]]
    assert predictors == ["sf", "ef", "biased", "MAdds (proxy)", "params (proxy)",
                          "ceiling: stand-alone seeds [0] vs [1]"]  # fmt: skip
    assert all(row["n"] == 5 for row in results["ranking"])
    # Every predictor is also scored beyond size (MAdds held fixed); for MAdds itself that is undefined.
    beyond = {row["predictor"]: row["partial_tau_given_madds"] for row in results["ranking"]}
    assert beyond["MAdds (proxy)"] is None  # NaN, written as strict JSON null
    # sf's taus recomputed from architectures.csv with scipy (Kendall's partial tau formula).
    import csv

    with open(report / "architectures.csv") as f:
        table = list(csv.DictReader(f))
    sf, truth, madds = (np.array([float(r[c]) for r in table]) for c in ("oneshot_sf", "standalone_mean", "madds"))
    t_st, t_sm, t_tm = (stats.kendalltau(a, b).statistic for a, b in ((sf, truth), (sf, madds), (truth, madds)))
    sf_row = next(row for row in results["ranking"] if row["predictor"] == "sf")
    assert sf_row["kendall_tau"] == pytest.approx(t_st, abs=1e-12)
    assert beyond["sf"] == pytest.approx((t_st - t_sm * t_tm) / math.sqrt((1 - t_sm**2) * (1 - t_tm**2)), abs=1e-12)
    assert [p["comparison"] for p in results["paired"]] == [
        "tau(sf) - tau(ef)", "tau(sf) - tau(biased)", "tau(ef) - tau(biased)",  # every pair of supernets
        *(f"tau({name}) - tau({proxy} (proxy))" for name in ("sf", "ef", "biased") for proxy in ("MAdds", "params")),
    ]  # fmt: skip
    assert set(results["similarity"]) == {"untrained", "sf", "ef", "biased"}
    assert {name: h["n"] for name, h in results["histograms"].items()} == {"sf": 8, "ef": 8, "biased": 8}
    for name in ("report.md", "ranking.csv", "paired.csv", "architectures.csv", "scatter.png", "histogram.png",
                 "similarity_sf.png", "similarity_untrained.png"):  # fmt: skip
        assert (report / name).stat().st_size > 0, name
    assert "| sf | 5 |" in (report / "report.md").read_text()
    assert "Ceiling over 1 balanced split of the seeds (1 per half)" in (report / "report.md").read_text()
    assert results["ceiling"]["all_halvings"]["count"] == 1
    # Every run is an ordinary run directory, and its command is on record.
    commands = (out / "commands.sh").read_text().splitlines()
    assert len(commands) == 5 * 2 + 3 + 3 * 2
    assert sum("arch=" in c for c in commands) == 10 and sum(c.startswith("python search.py") for c in commands) == 6
    arch = (out / "archs.txt").read_text().split()[0]
    assert json.loads((out / "ground_truth" / arch / "seed1" / "results.json").read_text())["arch"] == arch

    # Rerunning does nothing again: every run is skipped, no result is rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/**/results.json") if "report" not in p.parts}
    again = run_entry("study.py", *common, "stages=[ground_truth,supernets,oneshot]", timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len((out / "commands.sh").read_text().splitlines()) == len(commands)

    # Results kept without the checkpoints (as docs/ keeps them): finished stages still skip, and
    # the report, which needs the supernets, says which checkpoint is gone instead of a traceback.
    (out / "supernets" / "sf" / "checkpoints" / "last.ckpt").unlink()
    kept = run_entry("study.py", *common, "stages=[supernets,oneshot]", timeout=120)
    assert kept.returncode == 0, kept.stderr[-3000:]
    report_again = run_entry("study.py", *common, "stages=[report]", timeout=120)
    assert report_again.returncode == 2 and "Traceback" not in report_again.stderr
    assert "supernet 'sf' has finished" in report_again.stderr and "last.ckpt is missing" in report_again.stderr


def test_a_report_before_the_runs_is_one_clear_error(tmp_path: Path):
    done = run_entry("study.py", "study=ranking_tiny", f"study.out_dir={tmp_path}", "stages=[report]")
    assert done.returncode == 2
    assert "stand-alone runs are not finished" in done.stderr and "run the ground_truth stage first" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_predicted_ceiling_matches_simulated_seed_halves():
    # True accuracies with spread 1 plus seed noise 1: two means of 2 seeds correlate with r = 2/3.
    rng = np.random.default_rng(0)
    accs = rng.normal(size=(3000, 1)) + rng.normal(size=(3000, 4))
    predicted = predicted_ceiling(accs)
    assert predicted["signal_std"] == pytest.approx(1.0, abs=0.06)
    assert predicted["predicted_tau"]["2_vs_2_seeds"] == pytest.approx(2 / np.pi * np.arcsin(2 / 3), abs=0.03)
    simulated = stats.kendalltau(accs[:, :2].mean(axis=1), accs[:, 2:].mean(axis=1)).statistic
    assert predicted["predicted_tau"]["2_vs_2_seeds"] == pytest.approx(simulated, abs=0.03)
    assert predicted["predicted_tau"]["1_vs_1_seeds"] < predicted["predicted_tau"]["4_vs_4_seeds"]


def test_halvings_are_enumerated_or_drawn_reproducibly_and_expose_the_normal_models_bias():
    rng = np.random.default_rng(1)
    # Normal true accuracies: the mean tau over splits agrees with the normal model of their r.
    normal = rng.normal(size=(2000, 1)) + rng.normal(size=(2000, 6))
    h = halving_taus(normal)
    assert h["count"] == 10 and h["exhaustive"]  # C(6,3) / 2 splits of 6 seeds
    assert h["kendall_tau_mean"] == pytest.approx(h["normal_model_tau_mean"], abs=0.02)
    # A crowded middle with two far outliers: r stays high, tau does not, and the gap shows it.
    truth = np.concatenate([rng.normal(scale=0.1, size=38), [-8.0, -10.0]])[:, None]
    skewed = truth + rng.normal(size=(40, 6))
    h = halving_taus(skewed)
    assert h["normal_model_tau_mean"] - h["kendall_tau_mean"] > 0.2
    # Many seeds: a seeded random draw of splits, the same for the same seed.
    many = rng.normal(size=(30, 1)) + rng.normal(size=(30, 12))
    drawn = halving_taus(many, max_halvings=50, seed=3)
    assert drawn["count"] == 50 and not drawn["exhaustive"] and drawn["seeds_per_half"] == 6
    assert drawn == halving_taus(many, max_halvings=50, seed=3)
    assert drawn != halving_taus(many, max_halvings=50, seed=4)
    assert halving_taus(many)["count"] == 462 and halving_taus(many)["exhaustive"]


def test_a_probe_trains_and_scores_a_spread_subset_first(tmp_path: Path):
    space = load_space("fairnas_mini")
    full = RankingStudy(str(tmp_path), space, "fairnas_mini", sample_size=12, bootstrap=50)
    probe = RankingStudy(str(tmp_path), space, "fairnas_mini", sample_size=12, bootstrap=50, probe=4)
    subset = probe.source.order(probe)
    assert subset == full.source.order(full)[:4]  # the probe's runs count toward the full ground truth
    for arch in subset:
        for seed in probe.seeds:
            run = probe.standalone_dir(arch, seed)
            run.mkdir(parents=True)
            (run / "results.json").write_text(json.dumps({"val/acc": 0.5 + seed / 10, "madds": 1, "params": 2}))
    assert probe.ceiling()["n"] == 4
    with pytest.raises(ConfigError, match="not finished"):
        full.ceiling()
    with pytest.raises(ConfigError, match="probe is set"):
        probe.report()
