"""Peak memory of one strict-fairness step against the largest of its m exported children's steps.

Memory is traced, not sampled: each step runs once under the torch profiler with memory profiling,
whose memory timeline follows every tensor allocation and free and labels each by what it holds
(parameter, gradient, optimizer state, activation, temporary, ...). A step's working memory is
what it allocates above the model's persistent state: activations, temporaries, autograd detail,
the input and unlabelled buffers. Parameters, gradients and optimizer state are reported
separately (for the supernet they cover every block the step trained, i.e. the whole supernet).
Every step is run once untraced first, so optimizer state exists before the traced run, as in
training.

For each space (random images of its input shape, the default recipe's batch), the table gives
the peak working memory of each child's step and of the SF step in both step modes, and the
ratios to the largest child's. Target: per_path / largest child at most 1.15.

    .venv/bin/python benchmarks/bench_memory.py [--spaces fairnas_mini fairnas_cifar]
        [--memory-format channels_last|contiguous] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from functools import partial
from pathlib import Path

import torch
from common import setup, sgd
from torch.profiler import ProfilerActivity, _memory_profiler, profile

# Column order of the profiler's memory timeline: torch/profiler/_memory_profiler.py
# (_CATEGORY_TO_INDEX, shifted by one), checked against the installed torch on import.
COLUMNS = ["parameter", "optimizer_state", "input", "temporary", "activation", "gradient", "autograd_detail", "other"]
if [c.name.lower() if c else "other" for c in _memory_profiler._CATEGORY_TO_INDEX] != COLUMNS:
    raise ImportError("this torch labels the memory timeline differently: update COLUMNS in bench_memory.py")
PERSISTENT = ("parameter", "gradient", "optimizer_state")
MB = 2**20


def traced(fn) -> dict[str, float]:
    """Peak working memory (MB) of one call of ``fn``, and the persistent state at that moment."""
    fn()  # creates optimizer state and warms up kernels; the traced call is then a steady-state step
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timeline.json"
        with warnings.catch_warnings():  # deprecated for CUDA's snapshot API, which has no CPU counterpart
            warnings.simplefilter("ignore", FutureWarning)
            prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    rows = [dict(zip(COLUMNS, row[1:], strict=True)) for row in sizes]
    working = [sum(v for k, v in r.items() if k not in PERSISTENT) for r in rows]
    peak = max(range(len(rows)), key=working.__getitem__)
    out = {"working": working[peak] / MB}
    out.update({k: max(r[k] for r in rows) / MB for k in PERSISTENT})
    return out


def measure(name: str, memory_format: str) -> list[tuple]:
    s = setup(name, memory_format)
    children = [traced(partial(s.child_step, c, sgd(c.parameters()))) for c in s.children]
    largest = max(range(len(children)), key=lambda i: children[i]["working"])
    rows = [(name, f"child {s.supernet.space.format_arch(s.paths[largest])} (largest)", children[largest], 1.0)]
    base = children[largest]["working"]
    for mode in ("per_path", "fused"):
        mem = traced(partial(s.sf_step, sgd(s.supernet.parameters()), mode))
        rows.append((name, f"sf {mode}", mem, mem["working"] / base))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spaces", nargs="+", default=["fairnas_mini", "fairnas_cifar"])
    parser.add_argument("--memory-format", default="channels_last", choices=["channels_last", "contiguous"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for name in args.spaces for row in measure(name, args.memory_format)]
    print(f"\nmemory_format={args.memory_format}, torch {torch.__version__}; MB = 2^20 bytes")
    print("| space | step | working peak (MB) | / largest child | parameters (MB) | gradients (MB) | optimizer (MB) |")
    print("|---|---|---|---|---|---|---|")
    for name, what, m, ratio in rows:
        print(
            f"| {name} | {what} | {m['working']:.1f} | {ratio:.3f} | {m['parameter']:.2f} | {m['gradient']:.2f} "
            f"| {m['optimizer_state']:.2f} |"
        )


if __name__ == "__main__":
    main()
