"""Input pipeline throughput against what training consumes, on the default data (Fashion-MNIST).

The loader: the datamodule's training DataLoader as train.py builds it (in-memory tensors, the
seeded epoch order, batches of 128), iterated for one epoch, with each augmentation setting.
The consumer: training steps on the same batch size, timed on their own: the default SF step of
fairnas_mini (m = 6 single-path passes per batch, per_path mode) and, the hungriest consumer, a
stand-alone step of the smallest architecture (all skips). Headroom = loader images/s divided by
consumer images/s; target at least 5.

    .venv/bin/python benchmarks/bench_data.py [--threads 2] [--reps 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from common import setup, sgd

from fairnas.data import FashionMNISTDataModule


def loader_rate(augment: str | None) -> float:
    """Images per second of one epoch of the training loader."""
    dm = FashionMNISTDataModule(augment=augment, batch_size=128, val_size=5000, seed=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    start, images = time.perf_counter(), 0
    for x, _ in loader:
        images += len(x)
    return images / (time.perf_counter() - start)


def step_rate(fn, batch: int, reps: int) -> float:
    """Images per second of a training step (median of ``reps`` after one warm-up)."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    s = setup("fairnas_mini")
    smallest = setup("fairnas_mini")
    child = smallest.supernet.export(smallest.supernet.space.archs["smallest"])
    consumers = {
        "SF step, fairnas_mini (default train.py)": partial(s.sf_step, sgd(s.supernet.parameters())),
        "stand-alone step, smallest architecture": partial(smallest.child_step, child, sgd(child.parameters())),
    }
    consumed = {name: step_rate(fn, len(s.y), args.reps) for name, fn in consumers.items()}
    print(f"\nthreads={args.threads}, batch 128, torch {torch.__version__}")
    print("| augment | loader (images/s) | consumer | consumer (images/s) | headroom |")
    print("|---|---|---|---|---|")
    for augment in (None, "flip", "crop", "crop_flip"):
        rate = loader_rate(augment)
        for name, used in consumed.items():
            print(f"| {augment or 'none'} | {rate:,.0f} | {name} | {used:,.0f} | {rate / used:.1f} |")


if __name__ == "__main__":
    main()
