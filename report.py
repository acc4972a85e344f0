"""Compare the jobs of a sweep (or any runs): a table grouped by what differs, and plots.

    python report.py multirun/2026-12-01/14-05-00            # the sweep's folder
    python report.py outputs/run_a outputs/run_b --out cmp    # any run folders
    python report.py multirun/<date>/<time> --wandb           # also a W&B summary run (offline)

Writes report.md, report.csv (mean and std per group), jobs.csv (one row per job),
report_final.png and report_curves.png into the first folder (or --out).

The program is fairnas.cli.report (installed as the fairnas-report command); this script runs it from a checkout.
"""

import sys

from fairnas.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
