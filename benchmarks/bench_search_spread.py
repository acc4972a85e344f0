"""search.py on N processes against one process: wall time, time per architecture, identical outputs.

Runs ``search.py`` on a trained supernet the way a user does (a new interpreter each time, start-up
included), in turn for every layout and repetition (A B C A B C ...), each in a fresh run directory
(no cache). A layout is ``PxT``: P processes (``devices=P``; 1: no distribution) of T CPU threads
each (``OMP_NUM_THREADS``). Prints, per layout, the median wall time, the median time per newly
evaluated architecture, the paired speed-up against the first layout (the ratio taken repetition by
repetition, then its median), and whether ``evaluated.csv``, ``pareto.csv`` and ``best.yaml`` are
byte-identical to those of one process with the same threads (``1xT``; CPU sums depend on the number
of threads, not on the number of processes), and to the first layout's.

    .venv/bin/python benchmarks/bench_search_spread.py CKPT [--layouts 1x2 2x1 1x1] [--reps 3]
        [-- search.py overrides, e.g. strategy=random strategy.num_samples=120]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("evaluated.csv", "pareto.csv", "best.yaml")


def run(ckpt: str, layout: str, overrides: list[str], out: Path) -> tuple[float, dict]:
    processes, threads = (int(v) for v in layout.split("x"))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, str(ROOT / "search.py"), f"ckpt_path={ckpt}", "device=cpu", "logger=none",
               *overrides, *([f"devices={processes}"] if processes > 1 else []), f"hydra.run.dir={out}"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{layout} failed:\n{done.stderr[-3000:]}")
    return wall, json.loads((out / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--layouts", nargs="+", default=["1x2", "2x1", "1x1"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    walls: dict[str, list[float]] = {k: [] for k in args.layouts}
    new: dict[str, list[int]] = {k: [] for k in args.layouts}
    same: dict[tuple[str, str], bool] = {}  # (layout, other layout): outputs identical in every repetition
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for layout in args.layouts:
                out = Path(tmp) / f"{layout}-{rep}"
                wall, results = run(args.ckpt, layout, args.overrides, out)
                walls[layout].append(wall)
                new[layout].append(results["new_evaluations"])
                print(f"rep {rep} {layout}: {wall:.1f} s, {results['new_evaluations']} new", file=sys.stderr)
            for layout in args.layouts:  # once the repetition's every layout has run
                out = Path(tmp) / f"{layout}-{rep}"
                for other in {f"1x{layout.split('x')[1]}", args.layouts[0]}:
                    ref = Path(tmp) / f"{other}-{rep}"
                    if ref.exists():
                        same[(layout, other)] = same.get((layout, other), True) and all(
                            (out / n).read_bytes() == (ref / n).read_bytes() for n in OUTPUTS
                        )
    base = args.layouts[0]
    print(f"search.py {' '.join(args.overrides)}; {args.reps} repetitions, layouts in turn; "
          f"{os.cpu_count()} cores\n")  # fmt: skip
    print("| layout (processes x threads) | wall s (median) | s per architecture | speed-up vs " + base
          + " (paired median) | identical to 1 process, same threads | identical to " + base + " |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for layout in args.layouts:
        per_arch = statistics.median(w / n for w, n in zip(walls[layout], new[layout], strict=True))
        ratio = statistics.median(b / w for b, w in zip(walls[base], walls[layout], strict=True))
        alone = None if layout.startswith("1x") else same.get((layout, f"1x{layout.split('x')[1]}"))
        print(
            f"| {layout} | {statistics.median(walls[layout]):.1f} | {per_arch:.3f} | {ratio:.2f}x | "
            f"{'-' if alone is None else 'yes' if alone else 'no'} | {'yes' if same[(layout, base)] else 'no'} |"
        )


if __name__ == "__main__":
    main()
