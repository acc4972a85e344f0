"""The SF step under DDP, inside Lightning: per_path against fused (system.step_mode).

SupernetSystem on a CPU DDP Trainer (gloo, find_unused_parameters=True, as train.py sets it),
2 processes by default, random data of the space's input shape. per_path runs all backward
passes but a step's last under Lightning's block_backward_sync (one all-reduce per step); fused
runs one backward of the summed losses (one all-reduce). Each mode trains ``--steps`` steps, the
modes alternating for ``--rounds`` rounds; rank 0 prints the median step time of each mode over
all rounds (3 warm-up steps of each fit dropped) and their ratio.

    .venv/bin/python benchmarks/bench_ddp.py [--space fairnas_mini] [--steps 12] [--rounds 2] [--devices 2]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from common import BATCH, lightning_job
from pytorch_lightning.strategies import DDPStrategy

WARMUP = 3


class Clock(pl.Callback):
    """Step durations; rank 0 appends them to ``path`` as one 'mode t1 t2 ...' line."""

    def __init__(self, mode: str, path: Path) -> None:
        self.mode, self.path, self.stamps = mode, path, []

    def on_train_batch_start(self, *args) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_batch_end(self, *args) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_end(self, trainer, *args) -> None:
        if trainer.global_rank == 0:
            steps = [b - a for a, b in zip(self.stamps[::2], self.stamps[1::2], strict=True)][WARMUP:]
            with self.path.open("a") as f:
                f.write(" ".join([self.mode, *map(str, steps)]) + "\n")


def fit(space_name: str, mode: str, steps: int, devices: int, threads: int, path: Path) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the spawned workers' torch threads (Lightning reads it)
    system, loader = lightning_job(space_name, devices * (steps + WARMUP), mode)
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy=DDPStrategy(find_unused_parameters=True, start_method="spawn"),
        max_steps=steps + WARMUP, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[Clock(mode, path)],
    )  # fmt: skip
    trainer.fit(system, loader)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--space", default="fairnas_mini")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"per_path": [], "fused": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "steps.txt"
        for _ in range(args.rounds):
            for mode in times:
                fit(args.space, mode, args.steps, args.devices, args.threads, path)
        for line in path.read_text().splitlines():
            mode, *steps = line.split()
            times[mode] += map(float, steps)
    per_path, fused = (statistics.median(times[m]) for m in ("per_path", "fused"))
    print(f"\n{args.devices} CPU processes (gloo), threads={args.threads}, {len(times['fused'])} steps per mode, "
          f"torch {torch.__version__}")  # fmt: skip
    print("| space | batch per process | per_path (s) | fused (s) | fused / per_path |\n|---|---|---|---|---|")
    print(f"| {args.space} | {BATCH.get(args.space, 64)} | {per_path:.3f} | {fused:.3f} | {fused / per_path:.3f} |")


if __name__ == "__main__":
    main()
