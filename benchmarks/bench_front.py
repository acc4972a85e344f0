"""How good is a search's front after its first N evaluations? Hypervolume and best accuracy under MAdds limits.

Reads a search's ``evaluated.csv`` (in evaluation order; the space's named models, evaluated only
because they are named, are left out) and, for each budget N, takes the architectures the
strategy evaluated first. A seeded NSGA-II run with fewer generations evaluates exactly the first
N architectures of a longer run with the same seed and population (pymoo draws generation by
generation from one generator), so this tells, from one search, what a smaller budget would have
found. Prints one table:

* hypervolume of the (accuracy, MAdds) front, accuracy maximised and MAdds minimised, against
  the reference point (accuracy 0, the largest MAdds evaluated), MAdds scaled to [0, 1] by that
  largest value (higher is better; the same reference for every budget);
* the best accuracy within MAdds limits at the 25th, 50th and 75th percentile of the evaluated
  MAdds, and without a limit.

    .venv/bin/python benchmarks/bench_front.py <search run dir> [--budgets 200 240 280 320 400]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from pymoo.indicators.hv import HV


def read(search_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(search_dir / "evaluated.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["searched"] == "True"]
    return np.array([float(r["acc1"]) for r in rows]), np.array([float(r["madds"]) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("search_dir", type=Path)
    parser.add_argument("--budgets", type=int, nargs="+", default=[200, 240, 280, 320, 400])
    args = parser.parse_args()
    acc, madds = read(args.search_dir)
    top = madds.max()
    limits = {f"<= {q}th pct ({np.percentile(madds, q) / 1e6:.2f}M)": np.percentile(madds, q) for q in (25, 50, 75)}
    hv = HV(ref_point=np.array([0.0, 1.0]))
    print(f"{args.search_dir}: {len(acc)} architectures evaluated by the strategy")
    print("| first N | hypervolume | " + " | ".join(f"best acc {k}" for k in limits) + " | best acc |")
    print("|---|---|" + "---|" * (len(limits) + 1))
    for n in [b for b in args.budgets if b <= len(acc)]:
        a, m = acc[:n], madds[:n]
        volume = hv(np.column_stack([-a, m / top]))
        best = [f"{a[m <= limit].max():.4f}" if (m <= limit).any() else "-" for limit in limits.values()]
        print(f"| {n} | {volume:.5f} | " + " | ".join(best) + f" | {a.max():.4f} |")


if __name__ == "__main__":
    main()
