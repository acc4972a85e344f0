"""Every option of every config group composes and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from fairnas.data.registry import dataset_name
from fairnas.models import SearchSpace
from fairnas.run.record import DataSpec
from fairnas.samplers import PathSampler

GROUPS = {
    g: sorted(p.stem for p in (ROOT / "conf" / g).glob("*.yaml"))
    for g in ("search_space", "sampler", "logger", "callbacks", "dataset", "optimizer", "scheduler", "system")
}


def cfg_with(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return cfg


@pytest.mark.parametrize("name", GROUPS["search_space"])
def test_search_spaces(tmp_path, name):
    space = instantiate(cfg_with(tmp_path, f"search_space={name}").search_space)
    assert isinstance(space, SearchSpace) and space.num_layers >= 8 and space.num_choices >= 3


@pytest.mark.parametrize("name", GROUPS["sampler"])
def test_samplers(tmp_path, name):
    cfg = cfg_with(tmp_path, f"sampler={name}", *(["sampler.arch=0-1-2-3-4-5-0-1"] if name == "fixed" else []))
    space = instantiate(cfg.search_space)
    extra = {"arch": space.parse_arch(cfg.sampler.arch)} if name == "fixed" else {}
    sampler = instantiate(cfg.sampler, num_layers=space.num_layers, num_choices=space.num_choices, **extra)
    assert isinstance(sampler, PathSampler) and sampler.sample(0)


@pytest.mark.parametrize("name", GROUPS["logger"])
def test_loggers(tmp_path, name, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = cfg_with(tmp_path, f"logger={name}")
    loggers = [instantiate(c) for c in (cfg.logger or {}).values()]
    assert len(loggers) == {"none": 0, "many": 3}.get(name, 1)


def test_several_loggers_from_the_command_line(tmp_path):
    cfg = cfg_with(tmp_path, "logger=[csv,tensorboard]")
    assert set(cfg.logger) == {"csv", "tensorboard"}


@pytest.mark.parametrize("name", GROUPS["dataset"])
def test_datasets(tmp_path, name):
    root = ["dataset.root=" + str(tmp_path)] if name in ("imagenet", "image_folder", "cifar10_folder") else []
    if root:
        from PIL import Image

        for split in ("train", "val"):
            for cls in ("a", "b"):
                (tmp_path / split / cls).mkdir(parents=True)
                for i in range(3):
                    Image.new("RGB", (12, 12), (i * 40, 0, 0)).save(tmp_path / split / cls / f"{i}.png")
    cfg = cfg_with(tmp_path, f"dataset={name}", *root)
    dm = instantiate(cfg.dataset)
    assert dm.num_classes > 0 and dm.in_channels in (1, 3) and dm.image_size > 0
    # A checkpoint names it by the config's name, and the registry builds it back from its settings.
    assert dataset_name(type(dm)) == name
    settings = {k: v for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items() if k != "_target_"}
    assert type(DataSpec(name, settings.pop("batch_size"), settings).build()) is type(dm)


@pytest.mark.parametrize("name", GROUPS["optimizer"])
def test_optimizers(tmp_path, name):
    import torch

    from fairnas.system import param_groups

    cfg = cfg_with(tmp_path, f"optimizer={name}")
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    optimizer = instantiate(cfg.optimizer)(param_groups(net, weight_decay_bn_bias=False))
    assert type(optimizer).__name__.lower() == name and optimizer.param_groups[1]["weight_decay"] == 0.0
    for scheduler in set(GROUPS["scheduler"]) - {"none"}:
        schedule = instantiate(cfg_with(tmp_path, f"scheduler={scheduler}").scheduler)(optimizer, total_steps=10)
        optimizer.step()
        schedule.step()
    assert not cfg_with(tmp_path, "scheduler=none").scheduler  # no schedule: a constant rate


def test_trainer_and_callbacks(tmp_path):
    cfg = cfg_with(tmp_path, "trainer.max_steps=3")
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    assert trainer.max_steps == 3 and trainer.default_root_dir == str(tmp_path)
    assert OmegaConf.select(cfg, "system.val_archs") == 8


def test_the_slurm_launcher_composes_with_one_task_per_device():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", "trainer.devices=4", "trainer.num_nodes=2", "ckpt_path=last"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.fairnas_slurm.launcher.SlurmLauncher"
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    assert launcher.max_num_timeout == 0 and launcher.signal_delay_s > 0  # fairnas requeues, submitit does not
    assert launcher.additional_parameters.requeue is True
    assert cfg.ckpt_path == "last"
    # GPUs follow the accelerator: none on the CPU (a CPU partition would refuse the job otherwise).
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cpu = compose("train", overrides=["hydra/launcher=slurm", "trainer.accelerator=cpu", "trainer.devices=2"],
                      return_hydra_config=True)  # fmt: skip
        search = compose("search", overrides=["hydra/launcher=slurm", "ckpt_path=x", "device=cpu"],
                         return_hydra_config=True)  # fmt: skip
    assert (cpu.hydra.launcher.tasks_per_node, cpu.hydra.launcher.gpus_per_node) == (2, None)
    assert (search.hydra.launcher.tasks_per_node, search.hydra.launcher.gpus_per_node) == (1, None)


def test_users_add_config_folders_through_the_search_path(tmp_path):
    mine = tmp_path / "my_conf" / "search_space"
    mine.mkdir(parents=True)
    text = (ROOT / "conf" / "search_space" / "fairnas_mini.yaml").read_text()
    (mine / "my_space.yaml").write_text(text.replace("name: fairnas_mini", "name: my_space"))
    cfg = cfg_with(tmp_path, f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "search_space=my_space")
    assert instantiate(cfg.search_space).name == "my_space"
