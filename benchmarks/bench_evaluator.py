"""Cost of evaluating one architecture with the supernet vs the bare forward passes it needs.

For each of N random architectures of fairnas_mini on Fashion-MNIST (5000 held-out validation
images, 10 calibration batches of 128), interleaved and paired:
  * evaluator: SupernetEvaluator.evaluate(arch) (BN reset + recalibration on the supernet path,
    validation, restore of the supernet's statistics);
  * floor: the same forward passes on the exported stand-alone network (calibration batches in
    train mode, validation batches in eval mode), nothing else.
Prints a table and the median ratio. Target: at most 1.2.

    .venv/bin/python benchmarks/bench_evaluator.py [--ckpt PATH] [--archs 12] [--threads 2]
        [--memory-format channels_last|contiguous]
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
from fairnas.search import SupernetEvaluator, load_supernet, materialise  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def floor(net, calib, val, memory_format):
    net.train()
    for x, _ in calib:
        net(layout.as_layout(x, memory_format))
    net.eval()
    for x, _ in val:
        net(layout.as_layout(x, memory_format))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", default=None, help="a trained supernet checkpoint (default: fresh weights)")
    parser.add_argument("--archs", type=int, default=12)
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
    val = materialise(dm.val_dataloader(), None, cpu)
    ev = SupernetEvaluator(supernet, calib, val, CostModel.create(space), memory_format=args.memory_format)
    rng = np.random.default_rng(0)
    rows = []
    for arch in [tuple(int(c) for c in r) for r in rng.integers(0, space.num_choices, (args.archs, space.num_layers))]:
        child = supernet.export(arch)
        floor(child, calib, val, args.memory_format)  # warm-up of this shape
        t0 = time.perf_counter()
        ev.evaluate(arch)
        t1 = time.perf_counter()
        floor(child, calib, val, args.memory_format)
        t2 = time.perf_counter()
        rows.append((space.format_arch(arch), t1 - t0, t2 - t1))
    print(f"{'arch':<18}{'evaluator s':>12}{'floor s':>10}{'ratio':>8}")
    for arch, a, b in rows:
        print(f"{arch:<18}{a:>12.3f}{b:>10.3f}{a / b:>8.2f}")
    ratios = [a / b for _, a, b in rows]
    images = sum(len(y) for _, y in val)
    print(f"median ratio {statistics.median(ratios):.3f} over {len(rows)} architectures")
    print(f"({len(calib)} calibration batches of {calib[0][0].shape[0]}, {images} validation images)")


if __name__ == "__main__":
    main()
