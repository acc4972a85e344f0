"""The run record: typed and validated from checkpoints, nothing in it ever built, changed resumes refused."""

from __future__ import annotations

import collections
import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fairnas.data import DataError, SyntheticDataModule
from fairnas.data.registry import DATASETS, UnknownDatasetError, datamodule_class
from fairnas.errors import ConfigError
from fairnas.run.checkpoint import CheckpointError, load_checkpoint, load_supernet, read_record
from fairnas.run.record import (
    SCHEMA_VERSION,
    RunRecord,
    RunRecordError,
    from_train_config,
    select_overrides,
    space_and_data_overrides,
)
from fairnas.run.resume import differences, resume_record


def record_of(*overrides: str) -> RunRecord:
    """The record train.py would write for these overrides (composed, not run)."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["dataset=synthetic", *overrides])
    space = instantiate(cfg.search_space)
    datamodule = instantiate(cfg.dataset)
    arch = None if cfg.arch is None else space.format_arch(space.parse_arch(cfg.arch))
    retrain = space_and_data_overrides({"search_space": "fairnas_mini", "dataset": "synthetic"}, list(overrides))
    return from_train_config(cfg, space=space, datamodule=datamodule, arch=arch, retrain_overrides=retrain)


@pytest.fixture(scope="module")
def record() -> RunRecord:
    return record_of("dataset.batch_size=64")


def test_a_record_round_trips_through_a_weights_only_checkpoint(record, tmp_path):
    assert record.schema_version == SCHEMA_VERSION
    assert record.data.name == "synthetic" and record.data.batch_size == 64 and "batch_size" not in record.data.params
    assert record.sampler.target == "fairnas.samplers.StrictFairSampler"
    assert record.recipe.optimizer.target == "torch.optim.SGD" and record.recipe.optimizer.params["lr"] == 0.2
    assert record.recipe.max_steps == -1 and record.recipe.max_epochs == 1 and record.recipe.precision == "32-true"
    assert record.provenance.created and record.provenance.history == ()
    assert record.retrain_overrides == ("search_space=fairnas_mini", "dataset=synthetic", "dataset.batch_size=64")
    path = tmp_path / "r.ckpt"
    torch.save({"fairnas": record.to_dict()}, path)
    assert RunRecord.from_dict(torch.load(path, weights_only=True)["fairnas"]) == record
    assert record.space().name == "fairnas_mini"
    dm = record.data.build(eval_batch_size=7)
    assert isinstance(dm, SyntheticDataModule) and dm.batch_size == 64 and dm.eval_batch_size == 7


def test_git_commit_is_recorded_when_the_code_is_a_git_checkout(record):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert record.provenance.git_commit and len(record.provenance.git_commit.removesuffix("-dirty")) == 40


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["seed"], "0", "record.seed: expected an integer, got str"),
        (["seed"], True, "record.seed: expected an integer, got bool"),
        (["recipe", "optimizer", "params", "lr"], {"x": 1}, None),  # a mapping is plain data: allowed
        (["recipe", "max_steps"], 1.5, "record.recipe.max_steps: expected an integer, got float"),
        (["data", "batch_size"], None, "record.data.batch_size: expected an integer, got NoneType"),
        (["retrain_overrides"], "dataset=x", "record.retrain_overrides: expected a list"),
        (
            ["provenance", "history"],
            [{"time": 1, "git_commit": None, "checkpoint": "c"}],
            "record.provenance.history[0].time: expected a string",
        ),
        (["data", "params", "augment"], torch.zeros(1), "expected a string, number, boolean, null, list or mapping"),
        (["schema_version"], SCHEMA_VERSION + 1, "newer than this fairnas reads"),
        (["recipe", "colour"], "red", "record.recipe: unknown fields ['colour']"),
    ],
)
def test_every_field_is_type_checked(record, path, value, message):
    data = record.to_dict()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    if message is None:
        RunRecord.from_dict(data)
        return
    with pytest.raises(RunRecordError) as err:
        RunRecord.from_dict(data)
    assert message in str(err.value)


def test_a_missing_field_is_named(record):
    data = record.to_dict()
    del data["seed"]
    with pytest.raises(RunRecordError, match=r"record: missing fields \['seed'\]"):
        RunRecord.from_dict(data)


# Every place of a record where a crafted checkpoint could hide an object to build.
NESTINGS = [
    [],
    ["search_space"],
    ["search_space", "stem"],
    ["search_space", "stages", 0],
    ["search_space", "archs"],
    ["data"],
    ["data", "params"],
    ["data", "params", "augment"],
    ["sampler"],
    ["sampler", "params"],
    ["recipe", "optimizer", "params"],
    ["recipe", "system"],
    ["provenance"],
]


def _evil(marker: Path) -> dict:
    return {"_target_": "os.makedirs", "_args_": [str(marker)]}


def _plant(data: dict, where: list, marker: Path) -> None:
    node = data
    for key in where[:-1]:
        node = node[key]
    if not where:
        data.update(_evil(marker))
    elif isinstance(node[where[-1]], dict) and where[-1] != "augment":
        node[where[-1]].update(_evil(marker))
    else:
        node[where[-1]] = _evil(marker)


def _supernet_checkpoint(record: RunRecord, path: Path, meta: dict) -> Path:
    from fairnas.models import Supernet

    net = Supernet(record.space(), record.num_classes, record.in_channels)
    torch.save({"state_dict": {f"supernet.{k}": v for k, v in net.state_dict().items()}, "fairnas": meta}, path)
    return path


@pytest.mark.parametrize("where", NESTINGS, ids=lambda w: ".".join(map(str, w)) or "top")
def test_a_target_at_any_level_of_a_checkpoint_is_refused_and_never_run(record, tmp_path, where):
    marker = tmp_path / "pwned"
    data = record.to_dict()
    _plant(data, where, marker)
    ckpt = _supernet_checkpoint(record, tmp_path / "evil.ckpt", data)
    with pytest.raises(CheckpointError, match="holds an invalid run record") as err:
        net, saved = load_supernet(ckpt)
        saved.data.build()  # what search.py does next: never reached
    assert "_target_" in str(err.value) or "_args_" in str(err.value)
    assert not marker.exists()


def test_schema_0_metadata_is_read_and_its_dataset_target_is_only_a_name(record, tmp_path):
    """A checkpoint of the old format (a metadata dict with the dataset's _target_) still loads;
    its _target_ is looked up in the registry, never imported."""
    old = {
        "search_space": record.search_space,
        "dataset": {"_target_": "fairnas.data.SyntheticDataModule", "batch_size": 64, **record.data.params},
        "seed": 0,
        "num_classes": 10,
        "in_channels": 1,
        "arch": None,
        "retrain_overrides": ["search_space=fairnas_mini", "dataset=synthetic"],
    }
    v0 = load_supernet(_supernet_checkpoint(record, tmp_path / "v0.ckpt", old))[1]
    assert v0.schema_version == 0 and v0.recipe is None and v0.sampler is None
    assert v0.data == record.data and isinstance(v0.data.build(), SyntheticDataModule)
    marker = tmp_path / "pwned"
    evil = copy.deepcopy(old)
    evil["dataset"] = {"_target_": "os.makedirs", "name": str(marker), "batch_size": 1}
    evil_path = _supernet_checkpoint(record, tmp_path / "evil.ckpt", evil)
    saved = read_record(load_checkpoint(evil_path), evil_path)
    with pytest.raises(UnknownDatasetError, match=r"unknown dataset 'os.makedirs'.*allow_datasets=\[os.makedirs\]"):
        saved.data.build()
    evil["dataset"] = {**old["dataset"], "_args_": [str(marker)]}
    with pytest.raises(CheckpointError, match="record.data.params._args_"):
        evil2 = _supernet_checkpoint(record, tmp_path / "evil2.ckpt", evil)
        read_record(load_checkpoint(evil2), evil2)
    assert not marker.exists()


def test_the_registry_names_every_dataset_config_and_allows_others_only_by_name():
    for path in sorted((ROOT / "conf" / "dataset").glob("*.yaml")):
        target = OmegaConf.load(path)["_target_"]
        assert datamodule_class(path.stem) is DATASETS[path.stem] is datamodule_class(target), path.name
    with pytest.raises(UnknownDatasetError, match="fairnas builds only its own datamodules"):
        datamodule_class("collections.OrderedDict")
    assert datamodule_class("collections.OrderedDict", allow=["collections.OrderedDict"]) is collections.OrderedDict
    with pytest.raises(UnknownDatasetError, match="cannot be imported"):
        datamodule_class("no_such_module.Thing", allow=["no_such_module.Thing"])
    assert issubclass(UnknownDatasetError, DataError)  # a user error: exit code 2


def test_dataset_settings_a_datamodule_does_not_take_are_refused(record):
    bad = dataclasses.replace(record.data, params={**record.data.params, "colour": "red"})
    with pytest.raises(RunRecordError, match=r"dataset settings \['colour'\] are not settings of synthetic"):
        bad.build()


# ---------------------------------------------------------------------------------- resuming
def test_a_resume_with_other_training_settings_is_refused_naming_each_difference(record):
    now = record_of(
        "dataset.batch_size=32", "optimizer.lr=0.1", "sampler=ef", "seed=3", "dataset.augment=flip",
        "system.label_smoothing=0.0",
    )  # fmt: skip
    with pytest.raises(ConfigError) as err:
        resume_record(record, now, "last.ckpt")
    message = str(err.value)
    for line in [
        "  dataset.batch_size: 64 -> 32",
        "  optimizer.lr: 0.2 -> 0.1",
        "  sampler: 'fairnas.samplers.StrictFairSampler' -> 'fairnas.samplers.UniformSampler'",
        "  seed: 0 -> 3",
        "  dataset.augment: None -> 'flip'",
        "  system.label_smoothing: 0.1 -> 0.0",
    ]:
        assert line in message, line
    assert "optimizer and scheduler cannot change on resume" in message
    allow = message.split("resume_allow=[", 1)[1].split("]", 1)[0].split(",")
    assert allow == ["trainer.max_steps", "trainer.max_epochs", "max_paths", "seed", "dataset.batch_size",
                     "dataset.seed", "dataset.augment", "sampler", "system.label_smoothing"]  # fmt: skip


def test_another_optimizer_class_is_a_refused_difference_even_when_allowed(record):
    adam = ["optimizer._target_=torch.optim.Adam", "~optimizer.momentum", "~optimizer.nesterov"]
    now = record_of("dataset.batch_size=64", *adam)
    with pytest.raises(ConfigError, match=r"optimizer: 'torch.optim.SGD' -> 'torch.optim.Adam'") as err:
        resume_record(record, now, "last.ckpt", allow=["optimizer"])
    assert "optimizer.momentum: 0.9 -> (unset)" in str(err.value)
    assert "resume_allow" not in str(err.value)  # nothing here could be allowed
    with pytest.raises(ConfigError, match=r"resume_allow=\[dataset.batch_size\]\. The optimizer"):
        resume_record(record, record_of(*adam), "last.ckpt", allow=["optimizer"])


def test_budget_changes_are_allowed_by_default_and_recorded_in_the_history(record):
    now = record_of("dataset.batch_size=64", "trainer.max_steps=100", "dataset.num_workers=2", "system.val_archs=3")
    resumed = resume_record(record, now, "run/last.ckpt")
    assert resumed.recipe.max_steps == 100 and resumed.provenance.created == record.provenance.created
    (change,) = resumed.provenance.history
    assert change.checkpoint == "run/last.ckpt" and change.changes == {"trainer.max_steps": [-1, 100]}
    with pytest.raises(ConfigError, match=r"trainer.max_steps: -1 -> 100"):
        resume_record(record, now, "run/last.ckpt", allow=[])
    # a named change is allowed and kept in the history, after the earlier ones
    seeded = record_of("dataset.batch_size=64", "trainer.max_steps=100", "seed=5")
    again = resume_record(
        resumed, seeded, "run/last.ckpt", allow=["trainer.max_steps", "seed", "dataset.seed", "sampler"]
    )
    assert [c.changes for c in again.provenance.history][1] == {
        "seed": [0, 5], "dataset.seed": [0, 5], "sampler.seed": [0, 5]
    }  # fmt: skip
    assert RunRecord.from_dict(again.to_dict()) == again


def test_another_space_or_arch_is_refused_first(record):
    with pytest.raises(ConfigError, match="was trained with search space 'fairnas_mini'"):
        resume_record(record, record_of("dataset.batch_size=64", "search_space.head.dropout=0.5"), "c")
    with pytest.raises(ConfigError, match="is from a run with arch=None"):
        resume_record(record, record_of("dataset.batch_size=64", "arch=largest"), "c", allow=["arch"])


def test_a_schema_0_record_is_compared_on_what_it_holds(record):
    old = RunRecord.from_dict(
        {
            "search_space": record.search_space,
            "dataset": {"_target_": "fairnas.data.SyntheticDataModule", "batch_size": 64, **record.data.params},
            "seed": 0, "num_classes": 10, "in_channels": 1, "arch": None, "retrain_overrides": [],
        }
    )  # fmt: skip
    assert differences(old, record) == []
    resumed = resume_record(old, record, "c")
    assert resumed.schema_version == SCHEMA_VERSION and "schema-0" in resumed.provenance.history[0].note
    with pytest.raises(ConfigError, match="seed: 0 -> 1"):
        resume_record(old, record_of("dataset.batch_size=64", "seed=1"), "c")


# ---------------------------------------------------------------------------------- overrides
def test_overrides_are_selected_by_key_and_the_retrain_command_derived_in_one_place():
    task = ["dataset=synthetic", "dataset.batch_size=8", "+dataset.x=1", "datasets.y=2", "seed=3", "seedling=4",
            "search_space.head.dropout=0.1", "optimizer.lr=1"]  # fmt: skip
    assert select_overrides(task, ["dataset."]) == ["dataset.batch_size=8", "+dataset.x=1"]
    assert select_overrides(task, ["seed"]) == ["seed=3"]
    picked = space_and_data_overrides({"search_space": "fairnas_mini", "dataset": "synthetic"}, task)
    assert picked == ["search_space=fairnas_mini", "dataset=synthetic", "dataset.batch_size=8", "+dataset.x=1",
                      "seed=3", "search_space.head.dropout=0.1"]  # fmt: skip
    record = dataclasses.replace(record_of(), retrain_overrides=tuple(picked))
    assert record.retrain_args() == picked
    swapped = record.retrain_args("mnist", ["dataset.val_size=10", "strategy=random"])
    assert swapped == ["search_space=fairnas_mini", "seed=3", "search_space.head.dropout=0.1", "dataset=mnist",
                       "dataset.val_size=10"]  # fmt: skip


def test_a_path_budget_is_recorded_and_seen_by_resume_and_refusal(tmp_path):
    """max_paths=24 (sf on 8x6: 6 paths a step) records max_paths 24 and the max_steps 4 it set; extending it
    on resume is a recorded budget change, and refused when not allowed, naming both."""
    from conftest import COMMON, run_entry

    run = tmp_path / "run"
    proc = run_entry("train.py", *COMMON, "trainer.max_epochs=100", "max_paths=24", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    recipe = read_record(load_checkpoint(last), last).recipe
    assert (recipe.max_paths, recipe.max_steps) == (24, 4)
    refused = run_entry("train.py", *COMMON, "trainer.max_epochs=100", "max_paths=48", "ckpt_path=last",
                        "resume_allow=[]", f"hydra.run.dir={run}")  # fmt: skip
    assert refused.returncode == 2
    assert "max_paths: 24 -> 48" in refused.stderr and "trainer.max_steps: 4 -> 8" in refused.stderr
    assert "resume_allow=[trainer.max_steps,max_paths]" in refused.stderr  # what to do
    more = run_entry("train.py", *COMMON, "trainer.max_epochs=100", "max_paths=48", "ckpt_path=last",
                     f"hydra.run.dir={run}")  # fmt: skip
    assert more.returncode == 0, more.stderr[-3000:]
    record = read_record(load_checkpoint(last), last)
    assert (record.recipe.max_paths, record.recipe.max_steps) == (48, 8)
    assert record.provenance.history[-1].changes == {"trainer.max_steps": [4, 8], "max_paths": [24, 48]}


def test_the_calibration_seed_is_recorded_and_a_record_without_it_still_resumes():
    record = record_of()
    assert record.recipe.system["calibration_seed"] == 0 and record.recipe.system["val_seed"] == 0
    assert differences(record, record_of("system.calibration_seed=3")) == []  # validation only: not compared
    system = {k: v for k, v in record.recipe.system.items() if k != "calibration_seed"}
    older = RunRecord.from_dict({**record.to_dict(), "recipe": {**record.to_dict()["recipe"], "system": system}})
    assert older.recipe.system.get("calibration_seed") is None
    assert resume_record(older, record, "last.ckpt").provenance.history[-1].changes == {}
