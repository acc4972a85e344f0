"""Trains a tiny float64 supernet with 2-process CPU DDP (gloo, launched by Lightning), for test_ddp.py.

Usage: python tests/ddp_worker.py OUT_DIR CONFIG [CONFIG ...]

Runs the named configurations of CONFIGS one after another in the same two processes (one launch,
one process group). After each, every rank writes OUT_DIR/<config>.rank<r>.pt: the initial and
final parameters, the number of gradient all-reduce rounds, the global step and the skipped
(NaN/inf) updates. ``diverge`` seeds each rank's sampler differently, which the system must refuse
with an error: put it last.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import ROOT, tiny_space  # noqa: E402

from fairnas.models import Supernet  # noqa: E402
from fairnas.samplers import StrictFairSampler, UniformSampler  # noqa: E402
from fairnas.system import SupernetSystem, resolve_strategy  # noqa: E402

BATCH, N, WORLD = 8, 48, 2  # 24 samples per rank: 3 batches per epoch


def default_recipe() -> DictConfig:
    """train.py's default optimizer, scheduler and system settings (the groups conf/train.yaml picks)."""
    conf = ROOT / "conf"
    picked = {"optimizer": "sgd", "scheduler": "cosine", "system": "supernet"}
    return OmegaConf.create({group: OmegaConf.load(conf / group / f"{name}.yaml") for group, name in picked.items()})


# Each configuration: sampler, optimizer steps and what differs from plain SGD with momentum.
# clip=C: the default recipe of train.py (label smoothing, optimizer: lr, Nesterov momentum,
# weight decay without BN/bias decay; cosine schedule), clipped with the shared norm to C. The tiny
# net's gradient norms (0.13 to 0.8) never reach the default grad_clip=5, so each C is set between
# them: some updates of the run are clipped and some are not (the test checks both happen).
CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {"sampler": "sf", "steps": 3},
    "plain_fused": {"sampler": "sf", "steps": 3, "step_mode": "fused"},
    "recipe_sf": {"sampler": "sf", "steps": 3, "clip": 0.5},
    "recipe_sf_mean_split": {
        "sampler": "sf",
        "steps": 3,
        "clip": 0.18,
        "grad_reduction": "mean",
        "split_batch": True,
        "path_check_every": 2,
    },
    # ef: 3 optimizer steps (one all-reduce each) per batch; 5 steps end in the middle of batch 2.
    "recipe_ef": {"sampler": "ef", "steps": 5, "clip": 0.16},
    # Rank 1's batch 1 holds a NaN: both ranks must skip that update; 3 steps take 4 batches.
    "recipe_sf_nan_skip": {"sampler": "sf", "steps": 3, "clip": 0.5, "nonfinite": "skip", "poison": (1, 1)},
    "diverge": {"sampler": "sf", "steps": 3, "diverge": True},
}


def poisoned_index(poison: tuple[int, int] | None) -> int | None:
    """The sample that is NaN: the first one of batch ``b`` of rank ``r`` (see StridedShards)."""
    if poison is None:
        return None
    rank, b = poison
    return rank + WORLD * b * BATCH


def dataset(poison: tuple[int, int] | None = None) -> TensorDataset:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(N, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (N,), generator=g)
    if poison is not None:
        x[poisoned_index(poison), 0, 0, 0] = float("nan")
    return TensorDataset(x, y)


class StridedShards(pl.LightningDataModule):
    """Rank r trains on samples r, r + world, r + 2 world, ... in order (what the reference replays)."""

    def __init__(self, poison: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.data = dataset(poison)

    def train_dataloader(self) -> DataLoader:
        sampler = DistributedSampler(
            self.data, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
        )
        return DataLoader(self.data, batch_size=BATCH, sampler=sampler)


def system_for(config: dict[str, Any]) -> SupernetSystem:
    torch.manual_seed(0)
    space = tiny_space()
    supernet = Supernet(space).double()
    rank = int(os.environ.get("LOCAL_RANK", 0))
    seed = rank if config.get("diverge") else 0
    sampler_cls = {"sf": StrictFairSampler, "ef": UniformSampler}[config["sampler"]]
    kwargs: dict[str, Any] = {"optimizer": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9)}
    if "clip" in config:
        cfg = default_recipe()
        kwargs = {
            "optimizer": instantiate(cfg.optimizer),
            "scheduler": instantiate(cfg.scheduler),
            "label_smoothing": cfg.system.label_smoothing,
            "weight_decay_bn_bias": cfg.system.weight_decay_bn_bias,
            "grad_clip": config["clip"],
        }
    return SupernetSystem(
        supernet,
        sampler_cls(space.num_layers, space.num_choices, seed=seed),
        val_archs=1,
        step_mode=config.get("step_mode", "per_path"),
        grad_reduction=config.get("grad_reduction", "sum"),
        split_batch=config.get("split_batch", False),
        path_check_every=config.get("path_check_every", 1),
        nonfinite=config.get("nonfinite", "stop"),
        **kwargs,
    )


def run(name: str, out_dir: Path) -> None:
    config = CONFIGS[name]
    system = system_for(config)
    init = {k: v.clone() for k, v in system.supernet.state_dict().items()}
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=WORLD,
        strategy=resolve_strategy("auto", "cpu", WORLD),
        precision="64-true",
        max_steps=config["steps"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )
    rounds = [0]

    def counting_allreduce(state, bucket):
        if bucket.index() == 0:  # one round = one pass over all buckets
            rounds[0] += 1
        return default_hooks.allreduce_hook(state, bucket)

    class CountAllReduce(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            trainer.strategy.model.register_comm_hook(None, counting_allreduce)

    trainer.callbacks.append(CountAllReduce())
    trainer.fit(system, datamodule=StridedShards(config.get("poison")))
    final = {k: v.detach().cpu().clone() for k, v in system.supernet.state_dict().items()}
    torch.save(
        {
            "init": init,
            "final": final,
            "world_size": trainer.world_size,
            "rounds": rounds[0],
            "global_step": trainer.global_step,
            "nonfinite_steps": int(system.nonfinite_steps),
        },
        out_dir / f"{name}.rank{trainer.global_rank}.pt",
    )


def main() -> None:
    out_dir = Path(sys.argv[1])
    for name in sys.argv[2:]:
        run(name, out_dir)


if __name__ == "__main__":
    main()
