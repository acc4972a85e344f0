"""Measure a per-block latency table on this machine, for search.py latency_table=... anywhere.

The program is fairnas.cli.latency (installed as the fairnas-latency command); this script runs it from a checkout.
"""

from fairnas.cli.latency import main

if __name__ == "__main__":
    main()
