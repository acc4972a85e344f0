"""benchmarks/gpu_acceptance.py stays runnable: its CPU dry run on tiny shapes passes every gated check."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_acceptance  # noqa: E402


def test_gpu_acceptance_dry_run_prints_one_table_and_passes(capsys):
    code = gpu_acceptance.main(["--dry-run", "--reps", "1"])
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    checks = [row.split(" | ")[0].lstrip("| ") for row in table[1:]]
    assert {
        "correct",
        "fair",
        "step / floor",
        "memory",
        "lightning",
        "search",
        "search spread",
        "latency table",
    } <= set(checks), out
    assert checks.count("step / floor") == 4  # float32 and bf16-mixed, channels_last and contiguous
    assert "FAIL" not in out and code == 0, out
    assert "identical: yes" in out and "identical outputs: yes" in out  # search.py on 2 processes = on 1
