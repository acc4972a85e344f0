"""Search evaluation per architecture: shared-prefix groups vs one path at a time, and vs bare forwards.

--mode groups (default): G random architectures at a time (the size of an NSGA-II generation),
paired, in alternating order: the per-path reference (SupernetEvaluator.evaluate_reference, the
evaluator before the shared pass) on each of them, then evaluate_many on the whole group, which
must give identical numbers (checked). Prints seconds per architecture and the speed-up.

--mode floor: for each of N random architectures of fairnas_mini on Fashion-MNIST (5000 held-out validation
images, 10 calibration batches of 128), interleaved and paired:
  * evaluator: SupernetEvaluator.evaluate(arch) (BN reset + recalibration on the supernet path,
    validation, restore of the supernet's statistics);
  * floor: the same forward passes on the exported stand-alone network (calibration batches in
    train mode, validation batches in eval mode), nothing else.
Prints a table and the median ratio. Target: at most 1.2.

    .venv/bin/python benchmarks/bench_evaluator.py [--mode groups|floor] [--ckpt PATH] [--group 40]
        [--reps 3] [--archs 12] [--val-batches N] [--threads 2] [--memory-format channels_last|contiguous]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairnas.data import FashionMNISTDataModule  # noqa: E402
from fairnas.models import CostModel, Supernet, layout  # noqa: E402
from fairnas.run import load_supernet  # noqa: E402
from fairnas.search import SupernetEvaluator, materialise  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def floor(net, calib, val, memory_format):
    net.train()
    for x, _ in calib:
        net(layout.as_layout(x, memory_format))
    net.eval()
    for x, _ in val:
        net(layout.as_layout(x, memory_format))


def groups(ev: SupernetEvaluator, group: int, reps: int) -> None:
    """Paired: the per-path reference on each architecture of a random group, and the group together.

    Wall seconds and the process's CPU seconds are both reported: on a machine shared with other
    jobs the CPU seconds (with --threads 1) are the steadier measure of the work done.
    """
    space = ev.space
    rng = np.random.default_rng(0)
    print("| rep | architectures | reference wall (s/arch) | shared wall (s/arch) | wall speed-up "
          "| reference CPU (s/arch) | shared CPU (s/arch) | CPU speed-up | identical |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    walls, cpus = [], []
    for rep in range(reps):
        archs = [tuple(int(c) for c in r) for r in rng.integers(0, space.num_choices, (group, space.num_layers))]
        timed = {}
        for variant in ("reference", "shared") if rep % 2 == 0 else ("shared", "reference"):
            wall, cpu = time.perf_counter(), time.process_time()
            out = [ev.evaluate_reference(a) for a in archs] if variant == "reference" else ev.evaluate_many(archs)
            timed[variant] = (time.perf_counter() - wall, time.process_time() - cpu, out)
        (ref, ref_cpu, ref_out), (shared, shared_cpu, shared_out) = timed["reference"], timed["shared"]
        walls.append(ref / shared)
        cpus.append(ref_cpu / shared_cpu)
        print(f"| {rep} | {len(set(archs))} | {ref / group:.3f} | {shared / group:.3f} | {walls[-1]:.2f} "
              f"| {ref_cpu / group:.3f} | {shared_cpu / group:.3f} | {cpus[-1]:.2f} "
              f"| {'yes' if ref_out == shared_out else 'NO'} |", flush=True)  # fmt: skip
    print(f"median speed-up: wall {statistics.median(walls):.2f}, CPU {statistics.median(cpus):.2f}, "
          f"over {reps} paired groups of {group}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="groups", choices=["groups", "floor"])
    parser.add_argument("--ckpt", default=None, help="a trained supernet checkpoint (default: fresh weights)")
    parser.add_argument("--group", type=int, default=40, help="architectures per group (groups mode)")
    parser.add_argument("--reps", type=int, default=3, help="paired groups (groups mode)")
    parser.add_argument("--val-batches", type=int, default=None, help="validation batches of 500 (default: all 10)")
    parser.add_argument("--archs", type=int, default=12, help="architectures (floor mode)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-format", default="channels_last", choices=["channels_last", "contiguous"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.ckpt:
        supernet, _ = load_supernet(args.ckpt)
    else:
        supernet = Supernet(instantiate(OmegaConf.load(ROOT / "conf/search_space/fairnas_mini.yaml")))
    space = supernet.space
    dm = FashionMNISTDataModule(eval_batch_size=500)
    dm.setup("fit")
    cpu = torch.device("cpu")
    calib = materialise(dm.calibration_dataloader(10, seed=0), None, cpu)
    val = materialise(dm.val_dataloader(), args.val_batches, cpu)
    ev = SupernetEvaluator(supernet, calib, val, CostModel.create(space), memory_format=args.memory_format)
    images = sum(len(y) for _, y in val)
    print(f"({len(calib)} calibration batches of {calib[0][0].shape[0]}, {images} validation images, "
          f"{args.threads} threads, {'checkpoint ' + args.ckpt if args.ckpt else 'fresh weights'})")  # fmt: skip
    if args.mode == "groups":
        groups(ev, args.group, args.reps)
        return
    rng = np.random.default_rng(0)
    rows = []
    for arch in [tuple(int(c) for c in r) for r in rng.integers(0, space.num_choices, (args.archs, space.num_layers))]:
        child = supernet.export(arch)
        floor(child, calib, val, args.memory_format)  # warm-up of this shape
        t0 = time.perf_counter()
        ev.evaluate_reference(arch)
        t1 = time.perf_counter()
        floor(child, calib, val, args.memory_format)
        t2 = time.perf_counter()
        rows.append((space.format_arch(arch), t1 - t0, t2 - t1))
    print(f"{'arch':<18}{'evaluator s':>12}{'floor s':>10}{'ratio':>8}")
    for arch, a, b in rows:
        print(f"{arch:<18}{a:>12.3f}{b:>10.3f}{a / b:>8.2f}")
    ratios = [a / b for _, a, b in rows]
    print(f"median ratio {statistics.median(ratios):.3f} over {len(rows)} architectures")


if __name__ == "__main__":
    main()
