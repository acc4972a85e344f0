"""Experiment tracking: what every logger receives, and closing loggers at the end of every job.

Each job of a ``-m`` sweep is one run of every logger: one W&B run (in the job's own ``wandb/``
folder), one TensorBoard/CSV version. Every logger gets the whole resolved config (secrets left
out) plus a ``run`` section with what people filter and group on: sampler, search space, dataset,
L x m, world size, global batch size and the git commit. Names, groups and tags have defaults
that say what differs between a sweep's jobs; each can be set on the command line.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import Logger, WandbLogger

from fairnas.errors import ConfigError
from fairnas.run.record import git_commit

# Keys whose values never reach a logger (matched anywhere in a key, case-insensitive).
SECRET_KEYS = re.compile(r"api_?key|token|secret|passw(or)?d|credential", re.IGNORECASE)
_REDACTED = "<redacted>"


def redact(value: Any) -> Any:
    """A copy of nested dicts/lists with the values of secret-looking keys replaced."""
    if isinstance(value, Mapping):
        return {k: _REDACTED if SECRET_KEYS.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


@dataclass
class RunIdentity:
    """How a run is named and grouped in every logger.

    Args:
        name: Says what differs from the other jobs of a sweep, e.g. ``sf-fairnas_mini-s0``.
        group: Shared by the jobs of one sweep (the sweep directory), None for a single run.
        tags: The user's tags, then the sampler (or ``standalone``), search space and dataset names.
    """

    name: str
    group: str | None
    tags: list[str] = field(default_factory=list)


def run_identity(
    choices: Mapping[str, str],
    seed: int,
    arch: str | None = None,
    name: str | None = None,
    group: str | None = None,
    tags: Iterable[str] = (),
    sweep_dir: str | None = None,
) -> RunIdentity:
    """The name, group and tags of a run, from its config group choices (Hydra's
    ``runtime.choices``); explicit ``name``/``group`` win, ``tags`` are kept first."""
    space, data = choices.get("search_space", "space"), choices.get("dataset", "data")
    kind = "standalone" if arch is not None else choices.get("sampler", "supernet")
    if name is None:
        name = f"{arch if arch is not None else kind}-{space}-s{seed}"
    if group is None and sweep_dir is not None:  # multirun/2026-12-01/14-05-00 -> 2026-12-01_14-05-00
        group = "_".join(Path(sweep_dir).parts[-2:])
    user = [str(t) for t in tags]
    auto = [kind, str(space), str(data)]
    return RunIdentity(name=str(name), group=group, tags=user + [t for t in auto if t not in user])


def run_summary(
    choices: Mapping[str, str],
    num_layers: int,
    num_choices: int,
    identity: RunIdentity,
) -> dict[str, Any]:
    """The ``run`` section of the logged config: what runs are filtered and grouped on
    (:class:`LogRunConfig` adds the world size and global batch size the trainer uses)."""
    return {
        "name": identity.name,
        "group": identity.group,
        "tags": list(identity.tags),
        "sampler": choices.get("sampler"),
        "search_space": choices.get("search_space"),
        "dataset": choices.get("dataset"),
        "experiment": choices.get("experiment"),
        "layers_x_choices": f"{num_layers}x{num_choices}",
        "num_layers": num_layers,
        "num_choices": num_choices,
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
    }


class LogRunConfig(Callback):
    """Sends the full run config to every logger once, when fitting starts (rank 0 only), with
    the world size and global batch size the trainer actually uses.

    Args:
        config: The resolved config (plain, secrets removed), logged as hyperparameters.
        run: The ``run`` section (see :func:`run_summary`); ``world_size`` and
            ``global_batch_size`` are filled in from the trainer.
        batch_size: Per-process batch size, for the global batch size.
    """

    def __init__(self, config: dict[str, Any], run: dict[str, Any], batch_size: int | None = None) -> None:
        self.config = config
        self.run = run
        self.batch_size = batch_size

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        batch = None if self.batch_size is None else self.batch_size * trainer.world_size
        run = {**self.run, "world_size": trainer.world_size, "global_batch_size": batch}
        for logger in trainer.loggers:
            logger.log_hyperparams({**self.config, "run": run})


def build_loggers(configs: Iterable[Any], instantiate: Any) -> tuple[list[Logger], list[WandbLogger]]:
    """Instantiates the logger configs. A W&B logger with ``log_model`` set and ``offline: true``
    (which Lightning refuses) is built without it and returned in the second list: its
    checkpoints are logged as artifacts by :func:`log_file_artifact` (type ``model``) at the end of training,
    which works offline too (``wandb sync`` uploads them)."""
    loggers: list[Logger] = []
    artifacts: list[WandbLogger] = []
    for cfg in configs:
        target = str(cfg.get("_target_", ""))
        if target.endswith("WandbLogger") and cfg.get("offline") and cfg.get("log_model"):
            loggers.append(instantiate(cfg, log_model=False))
            artifacts.append(loggers[-1])
        else:
            loggers.append(instantiate(cfg))
    return loggers, artifacts


def log_file_artifact(
    logger: WandbLogger, name: str, kind: str, files: Iterable[Path], aliases: list[str] | None = None
) -> None:
    """Logs the existing ``files`` as one W&B artifact ``name`` of type ``kind`` (nothing if none exists)."""
    found = [Path(p) for p in files if Path(p).is_file()]
    if not found:
        return
    import wandb

    artifact = wandb.Artifact(name=re.sub(r"[^A-Za-z0-9_.-]+", "_", name), type=kind)
    for path in found:
        artifact.add_file(str(path), name=path.name)
    logger.experiment.log_artifact(artifact, aliases=aliases)


def finish_loggers(loggers: Iterable[Logger], status: str) -> None:
    """Finalizes every logger and ends the process's W&B run, so the next job of a sweep starts
    its own run (W&B otherwise hands the next ``wandb.init`` the run still in progress)."""
    for logger in loggers:
        try:
            logger.finalize(status)
        except Exception as err:  # a logger that cannot finalize must not hide the job's own outcome
            print(f"warning: could not finalize {type(logger).__name__}: {err}", file=sys.stderr)
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=0 if status == "success" else 1)


def supernet_run_info(ckpt_path: str | Path) -> dict[str, Any]:
    """Who trained a checkpoint: its path and, from the run's ``results.json`` beside
    ``checkpoints/`` (when there), the run's name, group, W&B id and directory. Read as JSON only."""
    import json

    path = Path(ckpt_path).resolve()
    info: dict[str, Any] = {"ckpt_path": str(path), "run_dir": str(path.parent.parent)}
    results = path.parent.parent / "results.json"
    try:
        saved = json.loads(results.read_text()) if results.is_file() else {}
    except (OSError, ValueError):
        saved = {}
    if isinstance(saved, dict):
        for key in ("run_name", "group", "wandb_run_id", "wandb_run_dir", "sampler", "search_space", "seed"):
            if isinstance(saved.get(key), (str, int, float)):
                info[key] = saved[key]
    return info


def steps_for_paths(max_paths: int, paths_per_step: int, updates_per_step: int) -> int:
    """Optimizer steps that train ``max_paths`` single-path passes (forward + backward).

    A sampler trains ``paths_per_step`` paths per batch in ``updates_per_step`` optimizer steps:
    sf makes one step of m paths, ef m steps of one path. Lightning's ``max_steps`` counts optimizer
    steps, so the same ``max_steps`` gives sf m times ef's compute; a path budget does not.
    """
    if max_paths is None or int(max_paths) < 1:
        raise ConfigError(f"max_paths must be a positive number of single-path passes, got {max_paths}")
    per_update = paths_per_step / updates_per_step
    steps = math.ceil(int(max_paths) / per_update)
    if steps * per_update != int(max_paths):
        raise ConfigError(
            f"max_paths={max_paths} is not a whole number of optimizer steps: this sampler trains "
            f"{per_update:g} paths per step; use a multiple of {per_update:g}"
        )
    return steps
