"""Options that may speed up training, measured on this machine: layout, bf16 autocast, torch.compile.

For each space, on one batch, paired and interleaved (every repetition times every variant once,
in rotating order), the median time of:
  * a training step of one exported child (the largest of the first SF step's m paths);
  * the SF step of the supernet (per_path mode, m paths);
under these variants:
  * contiguous: NCHW weights and batches, float32 (PyTorch's default);
  * channels_last: NHWC weights and batches, float32 (fairnas' default, system.memory_format);
  * channels_last + bf16: forward under torch.autocast(bfloat16) on the device;
  * channels_last + compile: the child compiled with torch.compile (inductor). The supernet is
    not compiled as a whole: its path is Python data, so every new path would be a new graph.
    Compile time is reported separately.
Ratios are to contiguous (below 1 is faster). ``--device cuda`` runs the same on a GPU (timings
synchronised), which is where channels_last and bf16 should be checked before a long GPU run.

    .venv/bin/python benchmarks/bench_options.py [--reps 10] [--threads 2] [--spaces ...] [--no-compile]
        [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F
from common import setup, sgd

from fairnas.models import CostModel

VARIANTS = ("contiguous", "channels_last", "channels_last + bf16", "channels_last + compile")


def make_steps(name: str, variant: str, device: str) -> tuple:
    """(child step, SF step or None, compile seconds) for one variant."""
    s = setup(name, "contiguous" if variant == "contiguous" else "channels_last", device=device)
    kind = torch.device(device).type
    autocast = (
        (lambda: torch.autocast(kind, dtype=torch.bfloat16)) if variant.endswith("bf16") else contextlib.nullcontext
    )
    cost = CostModel.create(s.supernet.space)
    largest = max(range(len(s.paths)), key=lambda i: cost.madds(s.paths[i]))
    child = s.children[largest]
    child_opt, sn_opt = sgd(child.parameters()), sgd(s.supernet.parameters())
    compiled = torch.compile(child) if variant.endswith("compile") else child

    def child_step():
        child_opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(compiled(s.x), s.y)
        loss.backward()
        child_opt.step()

    def sf_step():
        sn_opt.zero_grad(set_to_none=True)
        for arch in s.paths:
            with autocast():
                loss = F.cross_entropy(s.supernet(s.x, arch), s.y)
            loss.backward()
        sn_opt.step()

    start = time.perf_counter()
    child_step()  # compiles (when compiled) and warms up
    compile_s = time.perf_counter() - start if variant.endswith("compile") else None
    sf = None if variant.endswith("compile") else sf_step
    if sf:
        sf()
    return child_step, sf, compile_s


def measure(name: str, reps: int, variants: tuple[str, ...], device: str) -> list[tuple]:
    steps = {v: make_steps(name, v, device) for v in variants}
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times = {(v, k): [] for v in variants for k in ("child", "sf")}
    calls = [(v, "child", c) for v, (c, _, _) in steps.items()] + [(v, "sf", f) for v, (_, f, _) in steps.items() if f]
    for rep in range(reps):
        for v, kind, fn in calls[rep % len(calls) :] + calls[: rep % len(calls)]:
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[v, kind].append(time.perf_counter() - start)
    rows = []
    for v in variants:
        for kind in ("child", "sf"):
            if times[v, kind]:
                base = times["contiguous", kind]
                ratio = statistics.median(t / b for t, b in zip(times[v, kind], base, strict=True))
                rows.append((name, kind, v, statistics.median(times[v, kind]), ratio, steps[v][2]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spaces", nargs="+", default=["fairnas_mini", "fairnas_cifar"])
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = VARIANTS[:-1] if args.no_compile else VARIANTS
    rows = [row for name in args.spaces for row in measure(name, args.reps, variants, args.device)]
    print(f"\nthreads={args.threads}, reps={args.reps}, torch {torch.__version__}, device {args.device}")
    print("| space | step | variant | median (s) | / contiguous | compile (s) |")
    print("|---|---|---|---|---|---|")
    for name, kind, v, t, ratio, compile_s in rows:
        what = "child (largest of the m)" if kind == "child" else "SF per_path"
        print(f"| {name} | {what} | {v} | {t:.3f} | {ratio:.3f} | {'' if compile_s is None else f'{compile_s:.0f}'} |")


if __name__ == "__main__":
    main()
