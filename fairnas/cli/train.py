"""Train a FairNAS supernet (default: strict fairness), or one architecture stand-alone.

python train.py                                   # sf supernet, fairnas_mini, Fashion-MNIST
python train.py sampler=ef trainer.devices=4      # another sampler, DDP on 4 devices
python train.py arch=fairnas_a search_space=fairnas_imagenet dataset=imagenet dataset.root=/data/imagenet
"""

from __future__ import annotations

import inspect
import logging
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.utilities.exceptions import SIGTERMException

from fairnas.cli import CONFIG_DIR
from fairnas.data.base import SplitDataModule, check_seed
from fairnas.errors import ConfigError, exit_on_user_error
from fairnas.models import CostModel, SearchSpace, Supernet, build_child
from fairnas.ranking import RankingMonitor
from fairnas.run.checkpoint import SaveOnInterrupt
from fairnas.run.record import from_train_config, space_and_data_overrides, to_plain
from fairnas.run.resume import ALLOW_ON_RESUME, check_resume, find_resume_point
from fairnas.system import resolve_strategy
from fairnas.system.ddp import cluster_plugins, explicit_checkpoints_only, isolated_distributed_run
from fairnas.tracking import (
    LogRunConfig,
    build_loggers,
    finish_loggers,
    log_file_artifact,
    redact,
    run_identity,
    run_summary,
    steps_for_paths,
)
from fairnas.utils import write_json_atomic
from fairnas.utils.extras import apply_extras
from fairnas.utils.slurm import requeue_job, requeue_signals

log = logging.getLogger("fairnas")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Builds everything from the config, trains, and returns (and writes) the results."""
    start = time.time()
    requeue_signals.install()  # again: the submitit launcher set its own handlers since the import
    pl.seed_everything(check_seed(cfg.seed), workers=True, verbose=False)
    out_dir = Path(cfg.paths.output_dir)
    space: SearchSpace = instantiate(cfg.search_space)
    datamodule = instantiate(cfg.dataset)
    arch = None if cfg.arch is None else space.parse_arch(to_plain(cfg.arch))
    optimizer, scheduler = _optimizer_and_scheduler(cfg)
    sampler = None
    if arch is None:
        fixed = {"arch": space.parse_arch(to_plain(cfg.sampler.arch))} if "arch" in cfg.sampler else {}
        sampler = instantiate(cfg.sampler, num_layers=space.num_layers, num_choices=space.num_choices, **fixed)
    if cfg.get("max_paths") is not None:  # the budget is final before the record is made: it records both
        with open_dict(cfg):
            cfg.trainer.max_steps = _path_budget(cfg, sampler)
    record = from_train_config(
        cfg, space=space, datamodule=datamodule, arch=None if arch is None else space.format_arch(arch),
        retrain_overrides=_space_and_data_overrides(),
    )  # fmt: skip
    resume = find_resume_point(cfg.ckpt_path, out_dir)  # read once, checked before anything is built
    if resume is not None:
        allow = cfg.get("resume_allow", ALLOW_ON_RESUME)
        record = check_resume(resume, record, allow, cfg.trainer.get("max_steps"), cfg.trainer.get("max_epochs"))
    ckpt_path = None if resume is None else resume.path
    metadata = record.to_dict()  # what every checkpoint stores under "fairnas"
    if arch is None:
        supernet = Supernet(space, datamodule.num_classes, datamodule.in_channels, seed=cfg.seed)
        system = instantiate(cfg.system)(
            supernet=supernet,
            sampler=sampler,
            optimizer=optimizer,
            scheduler=scheduler,
            metadata=metadata,
            seed=cfg.seed,
        )
        log.info(
            "supernet %s: %d searchable layers x %d choices, sampler %r",
            space.name,
            space.num_layers,
            space.num_choices,
            sampler,
        )
    else:
        net = build_child(space, arch, datamodule.num_classes, datamodule.in_channels, seed=cfg.seed)
        system = instantiate(cfg.standalone)(
            net=net, optimizer=optimizer, scheduler=scheduler, metadata=metadata, seed=cfg.seed
        )
        log.info("stand-alone %s %s: %s", space.name, space.format_arch(arch), " ".join(space.describe_arch(arch)))

    choices = _choices()
    identity = run_identity(
        choices, cfg.seed, None if arch is None else space.format_arch(arch), cfg.get("name"), cfg.get("group"),
        cfg.get("tags") or [], _sweep_dir(),
    )  # fmt: skip
    with open_dict(cfg):
        cfg.name, cfg.group, cfg.tags = identity.name, identity.group, identity.tags
    loggers, artifact_loggers = build_loggers((cfg.get("logger") or {}).values(), instantiate)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    _prepare_monitors(callbacks, space, datamodule, arch)
    if not cfg.trainer.get("enable_progress_bar", True):  # trainer.enable_progress_bar=false wins over the group
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    batch_size = getattr(datamodule, "batch_size", None)
    summary = run_summary(choices, space.num_layers, space.num_choices, identity)
    callbacks.append(LogRunConfig(redact(OmegaConf.to_container(cfg, resolve=True)), summary, batch_size))
    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    strategy = resolve_strategy(
        t["strategy"], t["accelerator"], t["devices"], t["num_nodes"], arch is None, cpu_threads=cfg.get("cpu_threads")
    )
    plugins = [instantiate(p) for p in cfg.trainer.get("plugins") or []]
    plugins += cluster_plugins(plugins)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, logger=loggers or False, callbacks=callbacks, strategy=strategy, plugins=plugins or None
    )
    explicit_checkpoints_only(trainer)
    if isinstance(datamodule, SplitDataModule):
        # Our datamodules resume mid-epoch exactly, under DDP too (SplitDataModule.state_dict); Lightning cannot tell.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    status = "failed"
    try:
        # weights_only: a checkpoint can never run code (ours hold only tensors and plain data).
        try:
            trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SIGTERMException:
            # SaveOnInterrupt has saved the state; a scheduler must not read the stop as success:
            # 143 for SIGTERM, 130 for Ctrl+C (128 + the signal, as a shell reports it). A SLURM
            # requeue signal: rank 0 requeues the job once, and the job ends without a result (under
            # submitit too: SystemExit is not a result, so the sweep waits for the requeued run).
            saver = next((c for c in callbacks if isinstance(c, SaveOnInterrupt) and c.stopped_by), None)
            if saver is not None and saver.requeue and trainer.is_global_zero:
                requeue_job()
            sys.exit(128 + (saver.stopped_by if saver is not None else signal.SIGTERM))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if system.last_validated_step != trainer.global_step and trainer.limit_val_batches:
            # The run stopped mid-epoch (max_steps): validate the final weights too.
            metrics.update(trainer.validate(system, datamodule=datamodule, verbose=False)[0])
        if cfg.test:
            metrics.update(trainer.test(system, datamodule=datamodule, verbose=False)[0])
        if trainer.is_global_zero and artifact_loggers:
            checkpoints = sorted((out_dir / "checkpoints").glob("*.ckpt"))
            for logger in artifact_loggers:
                log_file_artifact(logger, f"model-{logger.experiment.id}", "model", checkpoints, aliases=["latest"])
        status = "success"
    finally:
        # Every job of a sweep ends its logger runs, also when it fails, so the next job gets its own.
        finish_loggers(loggers, status)

    results: dict[str, Any] = {
        **metrics,
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "seed": cfg.seed,
        "nonfinite_steps": int(system.nonfinite_steps),  # updates skipped for NaN/inf (system.nonfinite=skip)
        "world_size": trainer.world_size,
        "cpu_threads": torch.get_num_threads(),
        "wall_time_s": round(time.time() - start, 2),
        "search_space": space.name,
        "run_name": identity.name,
        "group": identity.group,
        "tags": identity.tags,
        **_wandb_ids(loggers),
    }
    if arch is None:
        results.update(sampler=type(sampler).__name__, fairness_spread=system.fairness_spread)
    else:
        cost = CostModel.create(space, datamodule.image_size, datamodule.num_classes, datamodule.in_channels)
        results.update(arch=space.format_arch(arch), madds=cost.madds(arch), params=cost.params(arch))
    if trainer.is_global_zero:
        write_json_atomic(out_dir / "results.json", results)
        log.info("results in %s: %s", out_dir / "results.json", {k: results[k] for k in sorted(results)})
    return results


def _prepare_monitors(callbacks: list[Any], space: SearchSpace, datamodule: Any, arch: Any) -> None:
    """Checks every ranking monitor's ground truth against the space and data, before anything is trained."""
    monitors = [c for c in callbacks if isinstance(c, RankingMonitor)]
    if monitors and arch is not None:
        raise ConfigError(
            "callbacks=ranking scores architectures with a supernet, but arch=... trains one network stand-alone: "
            "drop callbacks=ranking (or arch=...)"
        )
    for monitor in monitors:
        monitor.prepare(space, datamodule)


def _space_and_data_overrides() -> list[str]:
    """The overrides of this job that rebuild its search space and data (the record's ``retrain_overrides``)."""
    if not HydraConfig.initialized():
        return []
    hc = HydraConfig.get()
    return space_and_data_overrides(hc.runtime.choices, hc.overrides.task)


def _choices() -> dict[str, str]:
    """The config group choices of this job (sampler=sf, dataset=..., ...), Hydra's own groups left out."""
    if not HydraConfig.initialized():
        return {}
    chosen = HydraConfig.get().runtime.choices
    return {k: str(v) for k, v in chosen.items() if v is not None and not k.startswith("hydra")}


def _sweep_dir() -> str | None:
    """The directory of the -m sweep this job belongs to (its W&B group), None for a single run."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return str(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None


def _path_budget(cfg: DictConfig, sampler: Any) -> int:
    """trainer.max_steps for ``max_paths`` single-path passes of this run's sampler (None: stand-alone)."""
    if cfg.trainer.max_steps not in (None, -1):
        raise ConfigError(
            f"max_paths={cfg.max_paths} and trainer.max_steps={cfg.trainer.max_steps} both set a budget: keep one "
            "(max_paths gives every sampler the same compute)"
        )
    if sampler is None:  # stand-alone: one path per optimizer step
        return steps_for_paths(cfg.max_paths, 1, 1)
    return steps_for_paths(cfg.max_paths, sampler.paths_per_step, sampler.updates_per_step)


def _wandb_ids(loggers: list[Any]) -> dict[str, str]:
    """The W&B run this job logged to (id, and the folder its offline files are in), if any."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            run = logger._experiment
            return {"wandb_run_id": run.id, "wandb_run_dir": str(Path(run.dir).parent)}
    return {}


def _optimizer_and_scheduler(cfg: DictConfig) -> tuple[Any, Any]:
    """The optimizer and scheduler factories, each checked to take every setting it was given: an
    experiment's SGD momentum merged into optimizer=adamw, or schedule settings left under
    scheduler=none, fail here with one clear error instead of inside Lightning's set-up."""
    node = cfg.get("scheduler")
    if node and "_target_" not in node:
        keys = ", ".join(f"scheduler.{k}" for k in node)
        raise ConfigError(
            f"scheduler=none, but {keys} set (by an experiment or the command line): choose a scheduler "
            "(scheduler=cosine) or drop them (~scheduler.<key>)"
        )
    factories = {"optimizer": instantiate(cfg.optimizer), "scheduler": instantiate(node) if node else None}
    for group, factory in factories.items():
        if factory is None:
            continue
        try:
            inspect.signature(factory.func).bind_partial(*factory.args, **factory.keywords)
        except TypeError as error:
            name = f"{factory.func.__module__}.{factory.func.__qualname__}"
            raise ConfigError(
                f"{group}: {name} does not take these settings ({error}); they come from the {group} config, an "
                f"experiment or the command line: drop them (~{group}.<key>) or choose another {group}"
            ) from None
    return factories["optimizer"], factories["scheduler"]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    apply_extras(cfg)
    try:
        with isolated_distributed_run():  # in a -m sweep, the next job starts clean
            train(cfg)
    except Exception as err:
        exit_on_user_error(err, log)


if __name__ == "__main__":
    main()
