"""Train a FairNAS supernet (default: strict fairness), or one architecture stand-alone.

python train.py                                   # sf supernet, fairnas_mini, Fashion-MNIST
python train.py sampler=ef trainer.devices=4      # another sampler, DDP on 4 devices
python train.py arch=fairnas_a search_space=fairnas_imagenet dataset=imagenet dataset.root=/data/imagenet
"""

from __future__ import annotations

import logging
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from fairnas.config_error import ConfigError
from fairnas.data.base import SplitDataModule, check_seed
from fairnas.errors import exit_on_user_error
from fairnas.models import CostModel, SearchSpace, Supernet, build_child
from fairnas.search.checkpoint import load_checkpoint
from fairnas.system import resolve_strategy
from fairnas.system.ddp import isolated_distributed_run
from fairnas.utils import write_json_atomic

log = logging.getLogger("fairnas")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Builds everything from the config, trains, and returns (and writes) the results."""
    start = time.time()
    pl.seed_everything(check_seed(cfg.seed), workers=True, verbose=False)
    out_dir = Path(cfg.paths.output_dir)
    space: SearchSpace = instantiate(cfg.search_space)
    datamodule = instantiate(cfg.dataset)
    arch = None if cfg.arch is None else space.parse_arch(_plain(cfg.arch))
    metadata = {
        "search_space": space.to_dict(),
        "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
        "seed": cfg.seed,
        "num_classes": datamodule.num_classes,
        "in_channels": datamodule.in_channels,
        "arch": None if arch is None else space.format_arch(arch),
        # How to train an architecture of this space on this data from scratch (search.py prints it).
        "retrain_overrides": _retrain_overrides(),
    }
    ckpt_path = _resume_path(cfg.ckpt_path, out_dir)
    if ckpt_path is not None:
        _check_resumable(ckpt_path, metadata)
    optimizer, scheduler = instantiate(cfg.optimizer), instantiate(cfg.scheduler)
    if arch is None:
        supernet = Supernet(space, datamodule.num_classes, datamodule.in_channels, seed=cfg.seed)
        fixed = {"arch": space.parse_arch(_plain(cfg.sampler.arch))} if "arch" in cfg.sampler else {}
        sampler = instantiate(cfg.sampler, num_layers=space.num_layers, num_choices=space.num_choices, **fixed)
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

    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    strategy = resolve_strategy(t["strategy"], t["accelerator"], t["devices"], t["num_nodes"], arch is None)
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, strategy=strategy)
    if trainer.world_size == 1 and isinstance(datamodule, SplitDataModule):
        # Our datamodules resume mid-epoch exactly (SplitDataModule.state_dict); Lightning cannot tell.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    # weights_only: a checkpoint can never run code (ours hold only tensors and plain data).
    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        # SaveOnInterrupt has saved the state; a scheduler must not read the stop as success.
        sys.exit(128 + signal.SIGTERM)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if system.last_validated_step != trainer.global_step and trainer.limit_val_batches:
        # The run stopped mid-epoch (max_steps): validate the final weights too.
        metrics.update(trainer.validate(system, datamodule=datamodule, verbose=False)[0])
    if cfg.test:
        metrics.update(trainer.test(system, datamodule=datamodule, verbose=False)[0])

    results: dict[str, Any] = {
        **metrics,
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "seed": cfg.seed,
        "nonfinite_steps": int(system.nonfinite_steps),  # updates skipped for NaN/inf (system.nonfinite=skip)
        "world_size": trainer.world_size,
        "wall_time_s": round(time.time() - start, 2),
        "search_space": space.name,
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


def _resume_path(ckpt_path: str | None, out_dir: Path) -> str | None:
    """``ckpt_path=last``: the newest checkpoint of this run directory (periodic/interrupt
    ``checkpoints/last.ckpt`` or a SLURM requeue's ``hpc_ckpt_<n>.ckpt``), or a fresh start if none."""
    if ckpt_path != "last":
        return ckpt_path
    found = [p for p in [out_dir / "checkpoints" / "last.ckpt", *out_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    if not found:
        log.info("ckpt_path=last: no checkpoint in %s yet, starting from scratch", out_dir)
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime_ns)
    log.info("ckpt_path=last: resuming from %s", newest)
    return str(newest)


def _check_resumable(path: str, metadata: dict[str, Any]) -> None:
    """Refuses, before any training, a checkpoint of another space or kind of run."""
    saved = load_checkpoint(path)["fairnas"]
    if saved.get("search_space") != metadata["search_space"]:
        name = (saved.get("search_space") or {}).get("name")
        raise ConfigError(
            f"{path} was trained with search space {name!r} (or other settings of it), not "
            f"{metadata['search_space']['name']!r} as configured: resume with the same search_space and overrides"
        )
    if saved.get("arch") != metadata["arch"]:
        raise ConfigError(
            f"{path} is from a run with arch={saved.get('arch')}, this one has arch={metadata['arch']}: "
            "resume with the same arch (or none, for a supernet)"
        )


def _retrain_overrides() -> list[str]:
    if not HydraConfig.initialized():
        return []
    hc = HydraConfig.get()
    picked = [f"{group}={hc.runtime.choices[group]}" for group in ("search_space", "dataset")]
    fields = ("dataset.", "+dataset.", "search_space.", "+search_space.", "seed=")
    return picked + [o for o in hc.overrides.task if o.startswith(fields)]


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        with isolated_distributed_run():  # in a -m sweep, the next job starts clean
            train(cfg)
    except Exception as err:
        exit_on_user_error(err, log)


if __name__ == "__main__":
    main()
