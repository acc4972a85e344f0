"""The run record: what a training run is, as typed plain data stored in (and validated from) every checkpoint.

A :class:`RunRecord` names the search space, the data, the seed, the sampler and the recipe
(optimizer, scheduler, system settings, batch size, budget, precision) of a run, with its
provenance (git commit, time, and the history of resumes and the changes allowed at each). The
training system stores ``record.to_dict()`` under ``checkpoint["fairnas"]``; every reader goes
through :meth:`RunRecord.from_dict`, which checks the type of every field and refuses anything
else. Nothing in a record is ever instantiated: classes are recorded by name for comparison and
provenance, the dataset is looked up by name in :mod:`fairnas.data.registry`, and the search
space is parsed by :meth:`SearchSpace.create`. Keys starting with ``_`` (Hydra's ``_target_``,
``_args_``, ...) are refused at every level.

Checkpoints written before records existed (a plain ``metadata`` dict, no ``schema_version``)
read as schema version 0: their space, data, seed and arch are validated the same way; their
sampler and recipe were not recorded (``None``).
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import subprocess
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairnas.data.registry import DATASETS, class_path, datamodule_class, dataset_name
from fairnas.errors import ConfigError, RunRecordError
from fairnas.models.registry import import_block, registered_kinds
from fairnas.models.space import ArchitectureError, SearchSpace, SearchSpaceError

__all__ = [
    "NOT_COMPARED",
    "SCHEMA_VERSION",
    "Change",
    "Component",
    "DataSpec",
    "Provenance",
    "Recipe",
    "RunRecord",
    "RunRecordError",
    "now_utc",
    "space_and_data_overrides",
    "select_overrides",
]

SCHEMA_VERSION = 1

# Settings that do not change what is trained (where the files are, loader workers, validation,
# memory layout, the NaN policy): a resume may change them freely, and they are not compared.
NOT_COMPARED = frozenset(
    {
        "dataset.data_dir",
        "dataset.root",
        "dataset.download",
        "dataset.num_workers",
        "dataset.eval_batch_size",
        "system.val_archs",
        "system.val_seed",
        "system.calibration_seed",
        "system.val_bn_batches",
        "system.path_check_every",
        "system.memory_format",
        "system.step_mode",
        "system.nonfinite",
    }
)


# ---------------------------------------------------------------------------------- the schema
@dataclass(frozen=True)
class Component:
    """An optimizer, scheduler or sampler: its class, by import path (recorded, never imported), and settings."""

    target: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSpec:
    """The dataset: its registry name (``conf/dataset/<name>.yaml``; for a datamodule outside
    fairnas, the import path the user must allow), batch size and the datamodule's other settings."""

    name: str
    batch_size: int
    params: dict[str, Any] = field(default_factory=dict)

    def datamodule_class(self, allow: Sequence[str] = ()) -> type:
        return datamodule_class(self.name, allow)

    def build(self, allow: Sequence[str] = (), **overrides: Any) -> Any:
        """The datamodule, by registry name (or an allowed class), with these settings and ``overrides``."""
        cls = self.datamodule_class(allow)
        kwargs = {**self.params, "batch_size": self.batch_size, **overrides}
        accepted = _keyword_names(cls)
        unknown = sorted(set(kwargs) - accepted) if accepted is not None else []
        if unknown:
            raise RunRecordError(f"dataset settings {unknown} are not settings of {self.name} ({cls.__name__})")
        return cls(**kwargs)

    def config(self, allow: Sequence[str] = (), **overrides: Any) -> dict[str, Any]:
        """The Hydra-style dict of this dataset (as ``conf/dataset`` spells it), for fingerprints and logs only."""
        cls = self.datamodule_class(allow)
        target = f"fairnas.data.{cls.__name__}" if self.name in DATASETS else self.name
        return {"_target_": target, **self.params, "batch_size": self.batch_size, **overrides}


@dataclass(frozen=True)
class Recipe:
    """How the run trains: optimizer, LR schedule, the system's settings, budget and precision."""

    optimizer: Component
    scheduler: Component | None
    system: dict[str, Any]
    max_steps: int
    max_epochs: int | None
    precision: str
    max_paths: int | None = None  # the budget in single-path passes, when given that way (max_steps derives from it)


@dataclass(frozen=True)
class Change:
    """One resume of the run: when, by which code, from which checkpoint, and the changes allowed then."""

    time: str
    git_commit: str | None
    checkpoint: str
    changes: dict[str, Any] = field(default_factory=dict)  # key -> [saved, now]
    note: str = ""


@dataclass(frozen=True)
class Provenance:
    """Where the run comes from: the code (git commit, ``-dirty`` with local changes) and time of
    its start, and every resume since."""

    created: str | None
    git_commit: str | None
    history: tuple[Change, ...] = ()


@dataclass(frozen=True)
class RunRecord:
    """What a training run is (see the module docstring).

    Attributes:
        search_space: The fields ``SearchSpace.create`` takes (``SearchSpace.to_dict()``).
        data: The dataset (name, batch size, settings).
        seed: The run's seed.
        num_classes, in_channels: The data's shape, which the network was built for.
        arch: The architecture of a stand-alone run (``'-'``-joined indices), None for a supernet.
        sampler: The supernet's path sampler (None for a stand-alone run, or not recorded).
        recipe: Optimizer, scheduler, system settings, budget (None: not recorded, schema 0).
        retrain_overrides: The ``train.py`` overrides that train an architecture of this space
            on this data from scratch (``search_space=...``, ``dataset=...`` and their settings).
        provenance: Code version, start time, resume history.
        schema_version: The version of this schema the record was written with.
    """

    search_space: dict[str, Any]
    data: DataSpec
    seed: int
    num_classes: int
    in_channels: int
    arch: str | None
    sampler: Component | None
    recipe: Recipe | None
    retrain_overrides: tuple[str, ...]
    provenance: Provenance
    schema_version: int = SCHEMA_VERSION

    # ------------------------------------------------------------------ reading and writing
    @classmethod
    def from_dict(cls, data: Any) -> RunRecord:
        """Validates ``checkpoint["fairnas"]`` (any schema version up to this one) into a record.

        Raises:
            RunRecordError: naming the first field that is missing, unknown or of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise RunRecordError(f"the run record is a {type(data).__name__}, not a mapping")
        version = data.get("schema_version", 0)
        if type(version) is not int or version < 0:
            raise RunRecordError(f"schema_version must be a non-negative integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise RunRecordError(
                f"the run record has schema version {version}, newer than this fairnas reads ({SCHEMA_VERSION}): "
                "update fairnas to read this checkpoint"
            )
        if version == 0:
            data = _upgrade_v0(data)
        record = _parse(cls, data, "record")
        if record.schema_version != version:  # pragma: no cover - _upgrade_v0 keeps it
            raise RunRecordError("schema_version changed while reading the record")
        return record

    def to_dict(self) -> dict[str, Any]:
        """Plain data (dicts, lists, str, numbers, bool, None): what checkpoints store."""
        return _plain_out(dataclasses.asdict(self))

    # ------------------------------------------------------------------ what it describes
    def space(self, allow_blocks: Sequence[str] = ()) -> SearchSpace:
        """The search space, parsed from plain fields (no object named in the record is built).

        A space's ``blocks`` (block kinds of a user's own module) are never imported because a record
        names them: a kind must already be registered in this process, or be named by the user in
        ``allow_blocks`` (the programs' ``allow_blocks=[...]``), which imports it.
        """
        accepted = set(inspect.signature(SearchSpace.create).parameters)
        unknown = sorted(set(self.search_space) - accepted)
        if unknown:
            raise RunRecordError(f"search_space has unknown fields {unknown}; known: {sorted(accepted)}")
        blocks = self.search_space.get("blocks") or []
        if not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks):
            raise RunRecordError(f"search_space.blocks must be a list of import paths, got {blocks!r}")
        known = {f"{cls.__module__}.{cls.__qualname__}" for cls in registered_kinds().values()}
        for path in blocks:
            if path in known:
                continue  # its module is imported already: nothing runs
            if path not in allow_blocks:
                raise RunRecordError(
                    f"the search space uses the block kind {path!r} of a module of its own, and a checkpoint never "
                    f"imports code. If you trust that module, name it: allow_blocks=[{path}]"
                )
            import_block(path)
        try:
            return SearchSpace.create(**self.search_space)
        except (SearchSpaceError, ArchitectureError):
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise RunRecordError(f"search_space is not a valid space ({type(err).__name__}: {err})") from None

    def space_shape(self, allow_blocks: Sequence[str] = ()) -> dict[str, int]:
        """The space's nominal input and classes, for ``${search_space.*}`` in dataset configs."""
        space = self.space(allow_blocks)
        return {"input_size": space.input_size, "in_channels": space.in_channels, "num_classes": space.num_classes}

    def retrain_args(self, dataset: str | None = None, task_overrides: Sequence[str] = ()) -> list[str]:
        """The ``train.py`` overrides that train an architecture of this run's space and data from scratch.

        With ``dataset`` (a ``conf/dataset`` name chosen for the search), that dataset and the
        ``dataset.*`` overrides among ``task_overrides`` replace the training data's.
        """
        saved = list(self.retrain_overrides) or [f"search_space={self.search_space.get('name', '')}"]
        if dataset is None:
            return saved
        kept = [o for o in saved if not select_overrides([o], ("dataset", "dataset."))]
        return [*kept, f"dataset={dataset}", *select_overrides(task_overrides, ("dataset.",))]

    def flat(self) -> dict[str, Any]:
        """The compared settings as ``config.key -> value`` (the names a user overrides)."""
        out: dict[str, Any] = {
            "search_space": self.search_space,
            "arch": self.arch,
            "seed": self.seed,
            "dataset": self.data.name,
            "dataset.batch_size": self.data.batch_size,
        }
        out.update({f"dataset.{k}": v for k, v in self.data.params.items()})
        if self.sampler is not None:
            out["sampler"] = self.sampler.target
            out.update({f"sampler.{k}": v for k, v in self.sampler.params.items()})
        if self.recipe is not None:
            r = self.recipe
            out["optimizer"] = r.optimizer.target
            out.update({f"optimizer.{k}": v for k, v in r.optimizer.params.items()})
            out["scheduler"] = None if r.scheduler is None else r.scheduler.target
            if r.scheduler is not None:
                out.update({f"scheduler.{k}": v for k, v in r.scheduler.params.items()})
            out.update({f"system.{k}": v for k, v in r.system.items()})
            out.update({"trainer.max_steps": r.max_steps, "trainer.max_epochs": r.max_epochs, "max_paths": r.max_paths})
            out["trainer.precision"] = r.precision
        return {k: v for k, v in out.items() if k not in NOT_COMPARED}


# ---------------------------------------------------------------------------------- building one
def from_train_config(
    cfg: Any,
    *,
    space: SearchSpace,
    datamodule: Any,
    arch: str | None,
    retrain_overrides: Sequence[str],
    root: str | Path | None = None,
) -> RunRecord:
    """The record of a ``train.py`` run from its (resolved) config and the objects built from it.

    Raises:
        ConfigError: a setting that a record cannot hold as plain data (a nested ``_target_``).
    """
    container = to_plain

    def component(name: str, node: Any) -> Component | None:
        node = container(node)
        if not node:  # None, or the empty option (scheduler=none)
            return None
        return Component(str(node.get("_target_", "")), _settings(node, name))

    dataset = _settings(container(cfg.dataset), "dataset")
    batch_size = dataset.pop("batch_size", getattr(datamodule, "batch_size", None))
    if batch_size is None:
        raise ConfigError("dataset.batch_size is not set: a run record needs the training batch size")
    trainer = {k: cfg.trainer.get(k) for k in ("max_steps", "max_epochs", "precision")}  # not all of it resolves
    system = cfg.system if arch is None else cfg.standalone
    recipe = Recipe(
        optimizer=component("optimizer", cfg.optimizer),
        scheduler=component("scheduler", cfg.get("scheduler")),
        system=_settings(container(system), "system"),
        max_steps=-1 if trainer["max_steps"] is None else int(trainer["max_steps"]),
        max_epochs=None if trainer.get("max_epochs") is None else int(trainer["max_epochs"]),
        precision=str(trainer["precision"]),
        max_paths=None if cfg.get("max_paths") is None else int(cfg.max_paths),
    )
    return RunRecord(
        search_space=space.to_dict(),
        data=DataSpec(dataset_name(type(datamodule)), int(batch_size), dataset),
        seed=int(cfg.seed),
        num_classes=int(datamodule.num_classes),
        in_channels=int(datamodule.in_channels),
        arch=arch,
        sampler=component("sampler", cfg.sampler) if arch is None else None,
        recipe=recipe,
        retrain_overrides=tuple(retrain_overrides),
        provenance=Provenance(created=now_utc(), git_commit=git_commit(root)),
    )


def to_plain(node: Any) -> Any:
    """An OmegaConf node as plain, resolved Python data (dicts and lists); anything else as it is."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _settings(node: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A config node's settings without its Hydra keys (``_target_``, ``_partial_``, ...), as plain data."""
    out = {k: v for k, v in node.items() if not str(k).startswith("_")}
    try:
        return _plain(out, where)
    except RunRecordError as err:
        raise ConfigError(
            f"{err}. A run record holds plain settings only, so that search and resume can check them "
            "without building anything a file names"
        ) from None


def git_commit(root: str | Path | None = None) -> str | None:
    """The git commit of the code (``<sha>-dirty`` with uncommitted changes to tracked files), or None."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha or None


def now_utc() -> str:
    """The current UTC time, as records write it."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------- overrides
def _override_key(override: str) -> str:
    """``key`` of a Hydra override ``[+|++|~]key=value``."""
    return override.split("=", 1)[0].lstrip("+~")


def select_overrides(overrides: Sequence[str], keys: Sequence[str]) -> list[str]:
    """The overrides that set one of ``keys``: a key ending in ``.`` selects every key under it
    (``dataset.`` -> ``dataset.batch_size=64``, ``+dataset.x=1``), any other key only itself."""
    picked = []
    for override in overrides:
        key = _override_key(override)
        if any(key.startswith(k) if k.endswith(".") else key == k for k in keys):
            picked.append(override)
    return picked


def space_and_data_overrides(choices: Mapping[str, Any], task_overrides: Sequence[str]) -> list[str]:
    """What a record's ``retrain_overrides`` holds: ``train.py``'s search space and dataset, and their
    settings and seed (the overrides that rebuild the run's space and data)."""
    picked = [f"{group}={choices[group]}" for group in ("search_space", "dataset")]
    return picked + select_overrides(task_overrides, ("dataset.", "search_space.", "seed"))


# ---------------------------------------------------------------------------------- validation
def _upgrade_v0(data: Mapping[str, Any]) -> dict[str, Any]:
    """A schema-0 metadata dict in the shape of schema 1 (still to be validated)."""
    known = {"search_space", "dataset", "seed", "num_classes", "in_channels", "arch", "retrain_overrides"}
    unknown = sorted(str(k) for k in set(data) - known)
    if unknown:
        raise RunRecordError(f"the run metadata (schema 0) has unknown fields {unknown}")
    dataset = data.get("dataset")
    if not isinstance(dataset, Mapping):
        raise RunRecordError(f"record.dataset: expected a mapping, got {type(dataset).__name__}")
    target = dataset.get("_target_")
    if not isinstance(target, str):
        raise RunRecordError(f"record.dataset._target_: expected the datamodule's name, got {type(target).__name__}")
    params = {k: v for k, v in dataset.items() if k != "_target_"}
    if "batch_size" not in params:
        raise RunRecordError("record.dataset: batch_size is missing")
    batch_size = params.pop("batch_size")
    # The datamodule is named by the registry; any other class path stays a name that must be allowed.
    name = next((n for n, c in DATASETS.items() if target in (class_path(c), f"fairnas.data.{c.__name__}")), target)
    return {
        "search_space": data.get("search_space"),
        "data": {"name": name, "batch_size": batch_size, "params": params},
        "seed": data.get("seed"),
        "num_classes": data.get("num_classes"),
        "in_channels": data.get("in_channels"),
        "arch": data.get("arch"),
        "sampler": None,
        "recipe": None,
        "retrain_overrides": data.get("retrain_overrides") or [],
        "provenance": {"created": None, "git_commit": None, "history": []},
        "schema_version": 0,
    }


_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _parse(tp: Any, value: Any, where: str) -> Any:
    """``value`` checked against the type annotation ``tp`` (dataclasses, unions with None, tuples, dicts)."""
    if tp is Any:
        return _plain(value, where)
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        return _parse(options[0], value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise RunRecordError(f"{where}: expected a mapping, got {type(value).__name__}")
        fields = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(str(k) for k in value if k not in fields)
        if unknown:
            raise RunRecordError(
                f"{where}: unknown fields {unknown} (keys such as _target_ are refused: a checkpoint holds data, "
                "never objects to build)"
            )
        hints = typing.get_type_hints(tp)
        missing = [
            n for n, f in fields.items()
            if n not in value and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]  # fmt: skip
        if missing:
            raise RunRecordError(f"{where}: missing fields {missing}")
        return tp(**{n: _parse(hints[n], value[n], f"{where}.{n}") for n in fields if n in value})
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RunRecordError(f"{where}: expected a list, got {type(value).__name__}")
        item = typing.get_args(tp)[0]
        return tuple(_parse(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        return _plain(value, where, mapping=True)
    if tp in _KINDS:
        ok = type(value) is tp or (tp is float and type(value) is int)
        if not ok:
            raise RunRecordError(f"{where}: expected {_KINDS[tp]}, got {type(value).__name__} {_short(value)}")
        return float(value) if tp is float else value
    raise TypeError(f"unsupported type in the run record schema: {tp!r}")  # pragma: no cover - a schema bug


def _plain(value: Any, where: str, mapping: bool = False) -> Any:
    """A copy of plain data (str keys not starting with ``_``; str, int, float, bool, None, lists, dicts)."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise RunRecordError(f"{where}: keys must be strings, got {type(key).__name__} {_short(key)}")
            if key.startswith("_"):
                raise RunRecordError(
                    f"{where}.{key}: keys starting with '_' (such as _target_) are refused: a checkpoint holds "
                    "plain settings, never objects to build"
                )
            out[key] = _plain(item, f"{where}.{key}")
        return out
    if mapping:
        raise RunRecordError(f"{where}: expected a mapping, got {type(value).__name__}")
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or type(value) in (str, int, float, bool):
        return value
    raise RunRecordError(
        f"{where}: expected a string, number, boolean, null, list or mapping, got {type(value).__name__}"
    )


def _plain_out(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain_out(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_out(v) for v in value]
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _keyword_names(cls: type) -> set[str] | None:
    """The keyword arguments ``cls(...)`` accepts, following ``**kwargs`` passed up the class chain; None if unknown."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return None
