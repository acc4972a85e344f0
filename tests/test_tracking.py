"""Sweeps and dashboards as users meet them: one W&B run per job with the whole config, names,
groups and tags, equal path budgets, the search's run, the sweep report, Trainer overrides."""

from __future__ import annotations

import inspect
import json
import time

import pytest
import pytorch_lightning as pl
import yaml
from conftest import ROOT, run_entry
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fairnas.tracking import finish_loggers, redact, run_identity, steps_for_paths
from fairnas.utils.wandb_offline import read_offline_run

SMALL = ["dataset=synthetic", "dataset.num_train=128", "dataset.num_val=64", "dataset.batch_size=64",
         "system.val_archs=2", "system.val_bn_batches=1", "trainer.limit_val_batches=1"]  # fmt: skip


def test_run_names_say_what_differs_and_sweeps_share_a_group():
    sf = run_identity({"sampler": "sf", "search_space": "fairnas_mini", "dataset": "synthetic"}, 0,
                      sweep_dir="multirun/2026-12-01/14-05-00")  # fmt: skip
    ef = run_identity({"sampler": "ef", "search_space": "fairnas_mini", "dataset": "synthetic"}, 1,
                      sweep_dir="multirun/2026-12-01/14-05-00", tags=["mine"])  # fmt: skip
    assert (sf.name, ef.name) == ("sf-fairnas_mini-s0", "ef-fairnas_mini-s1")
    assert sf.group == ef.group == "2026-12-01_14-05-00"
    assert ef.tags == ["mine", "ef", "fairnas_mini", "synthetic"]
    alone = run_identity({"sampler": "sf", "search_space": "s", "dataset": "d"}, 2, arch="0-1", name=None)
    assert (alone.name, alone.group, alone.tags[0]) == ("0-1-s-s2", None, "standalone")
    assert run_identity({}, 0, name="mine", group="g").name == "mine"


def test_secrets_never_reach_a_logger():
    cfg = {"logger": {"wandb": {"api_key": "abc", "project": "p"}}, "x": [{"token": 1, "keep": 2}]}
    assert redact(cfg) == {"logger": {"wandb": {"api_key": "<redacted>", "project": "p"}},
                           "x": [{"token": "<redacted>", "keep": 2}]}  # fmt: skip


def test_a_path_budget_gives_every_sampler_the_same_passes():
    assert steps_for_paths(12, paths_per_step=6, updates_per_step=1) == 2  # sf: 6 paths per optimizer step
    assert steps_for_paths(12, paths_per_step=6, updates_per_step=6) == 12  # ef: 1 path per optimizer step
    with pytest.raises(ValueError, match="multiple of 6"):
        steps_for_paths(10, paths_per_step=6, updates_per_step=1)
    with pytest.raises(ValueError, match="positive number"):
        steps_for_paths(0, 6, 1)


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_every_trainer_argument_is_a_plain_override():
    trainer_cfg = OmegaConf.load(ROOT / "conf" / "trainer" / "default.yaml")
    args = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self", "logger", "callbacks"}
    assert args - set(trainer_cfg) == set()
    assert _compose("trainer.fast_dev_run=true", "trainer.profiler=simple").trainer.fast_dev_run is True


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_experiments_compose(name):
    cfg = _compose(f"experiment={name}")
    expected = {"fairnas_imagenet": ("fairnas_imagenet", 150, 0.045), "cifar10": ("fairnas_cifar", 100, 0.05),
                "ranking_curve_macro": ("nas_bench_macro", 50, 0.2)}[name]  # fmt: skip
    assert (cfg.search_space.name, cfg.trainer.max_epochs, cfg.optimizer.lr) == expected


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "conf" / "debug").glob("*.yaml")))
def test_debug_configs_compose(name):
    cfg = _compose(f"debug={name}")
    assert cfg.trainer.accelerator == "cpu" and not cfg.logger and "debug" in cfg.tags
    assert {"fdr": cfg.trainer.fast_dev_run is True, "overfit": cfg.trainer.overfit_batches == 3,
            "profiler": cfg.trainer.profiler == "simple", "limit": cfg.trainer.limit_train_batches == 3,
            "default": True}[name]  # fmt: skip


def test_a_failed_job_still_ends_its_wandb_run(tmp_path, monkeypatch):
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="fairnas")
    logger.experiment.log({"x": 1})
    assert wandb.run is not None
    finish_loggers([logger], "failed")
    assert wandb.run is None  # the next job of the sweep gets its own run
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    deadline = time.monotonic() + 60  # W&B's core process may still be flushing the file
    while read_offline_run(run_dir).exit_code is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert read_offline_run(run_dir).exit_code == 1


@pytest.fixture(scope="module")
def wandb_sweep(tmp_path_factory):
    """The headline use: a sampler sweep in W&B (offline), two jobs, one path budget, model artifacts."""
    sweep = tmp_path_factory.mktemp("sweep")
    proc = run_entry(
        "train.py", "-m", "sampler=sf,ef", *SMALL, "max_paths=12", "logger=[wandb,csv,tensorboard]",
        "logger.wandb.log_model=true", "tags=[study]", f"hydra.sweep.dir={sweep}", timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already in progress" not in proc.stderr + proc.stdout
    jobs = sorted(p.parent.parent for p in sweep.glob("*/.hydra/overrides.yaml"))
    return sweep, jobs


def test_each_sweep_job_is_its_own_wandb_run_with_the_whole_config(wandb_sweep):
    _, jobs = wandb_sweep
    assert len(jobs) == 2
    runs = []
    for job in jobs:
        (run_dir,) = (job / "wandb").glob("offline-run-*")  # one run, in the job's own folder
        runs.append(read_offline_run(run_dir))
    sf, ef = runs
    assert sf.id != ef.id and sf.name != ef.name
    assert (sf.name, ef.name) == ("sf-fairnas_mini-s0", "ef-fairnas_mini-s0")
    assert sf.group == ef.group == f"{jobs[0].parent.parent.name}_{jobs[0].parent.name}" and sf.group
    assert sf.tags == ["study", "sf", "fairnas_mini", "synthetic"] and "ef" in ef.tags
    for run, sampler in ((sf, "sf"), (ef, "ef")):
        assert run.config["run"]["sampler"] == sampler and run.config["run"]["search_space"] == "fairnas_mini"
        assert run.config["optimizer"]["lr"] == 0.2 and run.config["trainer"]["max_steps"] > 0
        assert run.config["run"]["layers_x_choices"] == "8x6" and run.config["run"]["global_batch_size"] == 64
        assert run.exit_code == 0
        assert [a["type"] for a in run.artifacts] == ["model"]  # log_model under offline: an artifact
        assert "last.ckpt" in run.artifacts[0]["files"]
    # Lightning's CSV and TensorBoard hparams hold the same whole config.
    for kind in ("csv", "tensorboard"):
        hparams = yaml.safe_load((jobs[1] / kind / "hparams.yaml").read_text())
        assert hparams["run"]["sampler"] == "ef" and hparams["optimizer"]["lr"] == 0.2


def test_a_path_budget_sweep_trains_sf_and_ef_equally(wandb_sweep):
    _, jobs = wandb_sweep
    results = [json.loads((job / "results.json").read_text()) for job in jobs]
    assert [r["sampler"] for r in results] == ["StrictFairSampler", "UniformSampler"]
    assert [r["train/paths"] for r in results] == [12.0, 12.0]  # same compute...
    assert [r["global_step"] for r in results] == [2, 12]  # ...in different numbers of optimizer steps
    for job in jobs:
        usage = (job / "block_usage.csv").read_text().splitlines()[1:]
        assert sum(int(line.split(",")[2]) for line in usage) == 12 * 8  # 12 paths x 8 layers


def test_usage_media_share_the_scalars_x_axis(wandb_sweep):
    _, jobs = wandb_sweep
    history = read_offline_run(next((jobs[1] / "wandb").glob("offline-run-*"))).history
    heatmap = [h["trainer/global_step"] for h in history if any(k.startswith("usage/heatmap") for k in h)]
    val = [h["trainer/global_step"] for h in history if "val/acc_mean" in h]
    assert heatmap and heatmap[-1] == val[-1] == 1  # ef: 12 optimizer steps in batches 0 and 1; one axis (batches)


def test_the_report_compares_the_sweep(wandb_sweep):
    from fairnas.cli.report import main as report_main

    sweep, _ = wandb_sweep
    assert report_main([str(sweep)]) == 0
    table = (sweep / "report.md").read_text()
    assert "| sampler | jobs |" in table and "\n| sf | 1 |" in table and "\n| ef | 1 |" in table
    rows = (sweep / "report.csv").read_text().splitlines()
    assert rows[0].startswith("sampler,jobs,seeds,val/acc_mean mean") and len(rows) == 3
    for plot in ("report_final.png", "report_curves.png"):
        assert (sweep / plot).read_bytes()[:4] == b"\x89PNG"


def test_the_search_run_names_its_supernet_and_holds_summary_metrics(wandb_sweep, tmp_path):
    _, jobs = wandb_sweep
    ckpt = jobs[0] / "checkpoints" / "last.ckpt"
    proc = run_entry(
        "search.py", f"ckpt_path={ckpt}", "strategy=random", "strategy.num_samples=4", "evaluator.bn_batches=1",
        "evaluator.val_batches=1", "logger=wandb", f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    run = read_offline_run(run_dir)
    supernet = json.loads((jobs[0] / "results.json").read_text())
    assert run.name == "search-sf-fairnas_mini-s0" and run.group == supernet["group"] and run.job_type == "search"
    assert run.config["supernet"]["run_name"] == "sf-fairnas_mini-s0"
    assert run.config["supernet"]["wandb_run_id"] == supernet["wandb_run_id"]
    assert run.config["supernet"]["ckpt_path"] == str(ckpt.resolve())
    assert run.config["strategy"]["num_samples"] == 4
    results = json.loads((tmp_path / "results.json").read_text())
    assert run.summary["search/best_acc1"] == pytest.approx(results["search/best_acc1"])
    assert run.summary["front_size"] == results["front_size"] and run.summary["num_evaluated"] >= 4
    (outputs,) = [a for a in run.artifacts if a["type"] == "search-results"]
    assert {"best.yaml", "pareto.csv", "evaluated.csv"} <= set(outputs["files"])


def test_fast_dev_run_is_a_plain_trainer_override(tmp_path):
    proc = run_entry("train.py", "trainer.fast_dev_run=true", *SMALL, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "results.json").read_text())["global_step"] == 1
