"""Trains a tiny supernet for a few float64 steps with 2-process CPU DDP (launched by Lightning).

Usage: [STEP_MODE=fused] python tests/ddp_worker.py OUT_FILE [same|diverge]. Rank 0 writes the initial and final
parameters and the number of gradient all-reduce rounds to OUT_FILE. With ``diverge`` each rank
seeds its sampler differently, which the system must refuse.
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import tiny_space  # noqa: E402

from fairnas.models import Supernet  # noqa: E402
from fairnas.samplers import StrictFairSampler  # noqa: E402
from fairnas.system import SupernetSystem, resolve_strategy  # noqa: E402

STEPS, BATCH, N = int(os.environ.get("STEPS", 3)), 8, 48
DEVICES = int(os.environ.get("DEVICES", 2))


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(123)
    return TensorDataset(
        torch.randn(N, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (N,), generator=g)
    )


class StridedShards(pl.LightningDataModule):
    """Rank r trains on samples r, r + world, r + 2 world, ... in order (what the reference replays)."""

    def train_dataloader(self) -> DataLoader:
        sampler = DistributedSampler(
            dataset(), num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
        )
        return DataLoader(dataset(), batch_size=BATCH, sampler=sampler)


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "same"
    torch.manual_seed(0)
    space = tiny_space()
    supernet = Supernet(space).double()
    init = {k: v.clone() for k, v in supernet.state_dict().items()}
    seed = int(os.environ.get("LOCAL_RANK", 0)) if mode == "diverge" else 0
    system = SupernetSystem(
        supernet,
        StrictFairSampler(space.num_layers, space.num_choices, seed=seed),
        optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9),
        val_archs=1,
        step_mode=os.environ.get("STEP_MODE", "per_path"),
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=DEVICES,
        strategy=resolve_strategy("auto", "cpu", DEVICES),
        precision="64-true",
        max_steps=STEPS,
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
    trainer.fit(system, datamodule=StridedShards())
    if trainer.is_global_zero:
        final = {k: v.detach().cpu().clone() for k, v in supernet.state_dict().items()}
        torch.save({"init": init, "final": final, "world_size": trainer.world_size, "rounds": rounds[0]}, out)


if __name__ == "__main__":
    main()
