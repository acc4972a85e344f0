"""Compare the jobs of a sweep (or any runs): a table grouped by what differs, and plots.

    python report.py multirun/2026-12-01/14-05-00            # the sweep's folder
    python report.py outputs/run_a outputs/run_b --out cmp    # any run folders
    python report.py multirun/<date>/<time> --wandb           # also a W&B summary run (offline)

Writes report.md, report.csv (mean and std per group), jobs.csv (one row per job),
report_final.png and report_curves.png into the first folder (or --out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fairnas.analysis.sweep_report import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", help="sweep folders (multirun/<date>/<time>) or run folders")
    parser.add_argument("--out", default=None, help="where the report goes (default: the first folder)")
    parser.add_argument("--wandb", action="store_true", help="also log the table and plots as a W&B run")
    parser.add_argument("--online", action="store_true", help="with --wandb: log online (default: offline)")
    args = parser.parse_args(argv)
    try:
        report, files = write_report(args.dirs, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(Path(files["report.md"]).read_text())
    print("written:", ", ".join(str(p) for p in files.values()))
    if args.wandb:
        _log_to_wandb(report, files, offline=not args.online)
    return 0


def _log_to_wandb(report, files, offline: bool) -> None:
    import csv

    import wandb

    groups = {j.results.get("group") for jobs in report.groups.values() for j in jobs} - {None}
    out_dir = Path(files["report.md"]).parent
    run = wandb.init(project="fairnas", job_type="report", dir=str(out_dir), mode="offline" if offline else "online",
                     group=groups.pop() if len(groups) == 1 else None, name=f"report-{out_dir.name}")  # fmt: skip
    with open(files["report.csv"]) as f:
        rows = list(csv.reader(f))
    run.log({
        "report/table": wandb.Table(columns=rows[0], data=rows[1:]),
        "report/final": wandb.Image(str(files["report_final.png"])),
        "report/curves": wandb.Image(str(files["report_curves.png"])),
    })  # fmt: skip
    run.finish()


if __name__ == "__main__":
    sys.exit(main())
