"""Search architectures with a trained supernet as the evaluator, and export the winners.

    python search.py ckpt_path=outputs/.../checkpoints/last.ckpt                  # NSGA-II (default)
    python search.py ckpt_path=... strategy=evolution strategy.max_madds=330e6
    python search.py ckpt_path=... strategy=random strategy.num_samples=500

Writes evaluated.csv, pareto.csv, pareto.png, best.yaml (each with the command that retrains it
from scratch), evaluations.jsonl (the resumable cache) and results.json to the run directory.

The program is fairnas.cli.search (installed as the fairnas-search command); this script runs it from a checkout.
"""

from fairnas.cli.search import main

if __name__ == "__main__":
    main()
