"""Latency tables checked against whole networks: predicted vs measured batch-1 latency on random architectures.

For each space, runs ``latency.py`` the way a user does (a new interpreter, default measurement
settings unless given): it measures every block, fits the prediction on ``fit_archs`` networks, and
times ``--validate`` *other* random networks whole in the same rounds as the blocks. Then, in a new
interpreter of its own, it measures those same validation networks again (``validate_table``): a
table is used at another moment than it was measured, and a shared machine drifts in between.
Prints, for both, the median absolute percentage error (goal at most 10%) and Kendall's tau (goal
at least 0.8) of the prediction, and the same for the plain sum of the blocks (no fit); the
measured range and the time the table took; writes ``latency_tables.json`` to ``--out``.

    .venv/bin/python benchmarks/bench_latency_table.py [--spaces fairnas_mini nas_bench_macro]
        [--validate 50] [--out DIR] [-- latency.py overrides, e.g. runtime=torch threads=2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The table's validation networks measured again in a process of their own (what a later use of the table meets).
LATER = """
import json, sys
from hydra.utils import instantiate
from omegaconf import OmegaConf
from fairnas.deploy.latency import LatencyTable, make_runtime, validate_table
table = LatencyTable.load(sys.argv[1])
space = instantiate(OmegaConf.load(f"conf/search_space/{sys.argv[2]}.yaml"))
runtime = make_runtime(table.runtime, table.device["type"], table.threads)
archs = [r["arch"] for r in table.validation["rows"]]
print(json.dumps({k: v for k, v in validate_table(table, space, runtime, archs=archs).items() if k != "rows"}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", nargs="+", default=["fairnas_mini", "nas_bench_macro"])
    parser.add_argument("--validate", type=int, default=50)
    parser.add_argument("--out", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-latency-"))
    tables = {}
    for space in args.spaces:
        run_dir = out / space
        command = [sys.executable, str(ROOT / "latency.py"), f"search_space={space}", f"validate={args.validate}",
                   *args.overrides, f"hydra.run.dir={run_dir}"]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env={**os.environ}, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{space} failed:\n{done.stderr[-3000:]}")
        table = json.loads((run_dir / "latency_table.json").read_text())
        table["wall_s"] = time.perf_counter() - start
        later = subprocess.run([sys.executable, "-c", LATER, str(run_dir / "latency_table.json"), space], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)  # fmt: skip
        if later.returncode != 0:
            raise SystemExit(f"{space}, later session failed:\n{later.stderr[-3000:]}")
        table["later"] = json.loads(later.stdout.strip().splitlines()[-1])
        tables[space] = table
        print(f"{space}: done in {table['wall_s']:.0f} s", file=sys.stderr, flush=True)
    (out / "latency_tables.json").write_text(json.dumps(tables, indent=2) + "\n")
    first = next(iter(tables.values()))
    print(f"\n{first['runtime']} {first['runtime_version']}, {first['threads']} thread(s), {first['device']['name']}; "
          f"{first['settings']}\n")  # fmt: skip
    print(
        "| space | units timed (stem, blocks, head) | fit networks | fit: scale, offset (ms) "
        "| validation networks timed | measured (ms) min-median-max | MdAPE | Kendall tau | plain sum: MdAPE, tau "
        "| table built in |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for space, t in tables.items():
        blocks = len(t["units"])
        for when, v in (("with the table", t["validation"]), ("later, own session", t["later"])):
            m, plain = v["measured_ms"], v["sum_only"]
            print(f"| {space} | {blocks} | {t['fit']['archs']} | {t['scale']:.3f}, {t['offset_ms']:.4f} | {when} "
                  f"| {m['min']:.3f}-{m['median']:.3f}-{m['max']:.3f} | {v['mdape_percent']:.1f}% ({v['archs']} "
                  f"networks) | {v['kendall_tau']:.3f} | {plain['mdape_percent']:.1f}%, {plain['kendall_tau']:.3f} "
                  f"| {t['wall_s']:.0f} s |")  # fmt: skip
    print("\nThe fit's first two networks are the space's fewest- and most-MAdds ones (in the fit, so in-sample):\n")
    print("| space | network | measured (ms) | predicted (ms) | error |")
    print("|---|---|---|---|---|")
    for space, t in tables.items():
        for name, row in zip(("fewest MAdds", "most MAdds"), t["fit"]["rows"][:2], strict=False):
            predicted = t["scale"] * row["sum_ms"] + t["offset_ms"]
            error = 100 * (predicted - row["measured_ms"]) / row["measured_ms"]
            print(f"| {space} | {name} {row['arch']} | {row['measured_ms']:.4f} | {predicted:.4f} | {error:+.1f}% |")
    print(f"\nwritten: {out / 'latency_tables.json'}")


if __name__ == "__main__":
    main()
