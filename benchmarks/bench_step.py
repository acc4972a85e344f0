"""Cost of one strict-fairness step against its floor: one training step of each of its m exported children.

For each space, on one batch (random images of the space's input shape), paired and interleaved:
  * floor: for each of the m paths of an SF step, one training step of the exported child network
    (forward, backward, optimizer step), one after the other: the physical floor of training m
    single-path models;
  * sf (per_path): the supernet step as SupernetSystem runs it: zero grads, forward + backward
    per path, one optimizer step over the supernet;
  * sf (fused): the m losses summed, one backward, one optimizer step (system.step_mode=fused).
Every repetition times floor, per_path and fused back to back (rotating the order), and the
table reports median times and the median of the per-repetition ratios. Then the same SF step
inside a Lightning Trainer (SupernetSystem, logging included), as median seconds per step.
Target: sf / floor at most 1.05 on CPU for fairnas_mini and fairnas_cifar.

    .venv/bin/python benchmarks/bench_step.py [--reps 15] [--threads 2] [--spaces fairnas_mini fairnas_cifar]
        [--memory-format channels_last|contiguous] [--no-lightning]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from common import lightning_job, setup, sgd


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(name: str, reps: int, memory_format: str) -> tuple:
    """Median times of floor, per_path and fused, and the median per-repetition ratios, for one space."""
    s = setup(name, memory_format)
    sn_opt, child_opts = sgd(s.supernet.parameters()), [sgd(c.parameters()) for c in s.children]

    def floor():
        for child, opt in zip(s.children, child_opts, strict=True):
            s.child_step(child, opt)

    fns = {"floor": floor, **{mode: partial(s.sf_step, sn_opt, mode) for mode in ("per_path", "fused")}}
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for rep in range(reps):
        for key in order[rep % 3 :] + order[: rep % 3]:
            times[key].append(timed(fns[key]))
    ratio = {k: statistics.median(a / f for a, f in zip(times[k], times["floor"])) for k in ("per_path", "fused")}
    medians = [statistics.median(times[k]) for k in fns]
    return (name, len(s.y), len(s.paths), *medians, ratio["per_path"], ratio["fused"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spaces", nargs="+", default=["fairnas_mini", "fairnas_cifar"])
    parser.add_argument("--memory-format", default="channels_last", choices=["channels_last", "contiguous"])
    parser.add_argument("--no-lightning", action="store_true", help="skip the steps inside a Lightning Trainer")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(name, args.reps, args.memory_format) for name in args.spaces]
    print(f"\nthreads={args.threads}, reps={args.reps}, memory_format={args.memory_format}, torch {torch.__version__}")
    print("| space | batch | m | floor (s) | sf per_path (s) | sf fused (s) | per_path / floor | fused / floor |")
    print("|---|---|---|---|---|---|---|---|")
    for name, b, m, tf, tp, tu, rp, ru in rows:
        print(f"| {name} | {b} | {m} | {tf:.3f} | {tp:.3f} | {tu:.3f} | {rp:.3f} | {ru:.3f} |")
    if args.no_lightning:
        return
    lightning_rows = [lightning_step(name, args.reps, args.threads, args.memory_format) for name in args.spaces]
    print("\n| space | step_mode | Lightning SF step, median (s) |\n|---|---|---|")
    for rows_ in lightning_rows:
        for name, mode, t in rows_:
            print(f"| {name} | {mode} | {t:.3f} |")


def lightning_step(name: str, steps: int, threads: int, memory_format: str) -> list[tuple[str, str, float]]:
    """Median wall time of SupernetSystem training steps inside a Trainer (logging included)."""
    torch.set_num_threads(threads)
    return [(name, mode, _lightning_median(name, steps, mode, memory_format)) for mode in ("per_path", "fused")]


def _lightning_median(name: str, steps: int, mode: str, memory_format: str) -> float:
    import pytorch_lightning as pl

    system, loader = lightning_job(name, steps + 3, mode, memory_format)
    stamps: list[float] = []

    class Clock(pl.Callback):
        def on_train_batch_start(self, *args):
            stamps.append(time.perf_counter())

        def on_train_batch_end(self, *args):
            stamps.append(time.perf_counter())

    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps + 3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[Clock()],
    )  # fmt: skip
    trainer.fit(system, loader)
    durations = [stamps[i + 1] - stamps[i] for i in range(0, len(stamps) - 1, 2)][3:]  # drop warm-up
    return statistics.median(durations)


if __name__ == "__main__":
    main()
