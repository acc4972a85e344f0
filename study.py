"""Run a ranking study: does the supernet rank architectures as stand-alone training does?

python study.py parallel=2 threads_per_job=1                     # the whole study (docs/ranking-study.md)
python study.py stages=[sample,ground_truth,ceiling]             # the stand-alone ground truth and its ceiling first
python study.py stages=[report]                                  # the report from finished runs

Resumable: finished runs (results.json) are skipped, interrupted ones resume from last.ckpt.

The program is fairnas.cli.study (installed as the fairnas-study command); this script runs it from a checkout.
"""

from fairnas.cli.study import main

if __name__ == "__main__":
    main()
