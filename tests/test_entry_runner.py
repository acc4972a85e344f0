"""The tests' way of running the programs (conftest.run_entry): a fork of the test process must
behave as ``python train.py ...`` in a new interpreter does, or the tests that use it prove nothing."""

from __future__ import annotations

import re

from conftest import run_entry


def _told(text: str, run_dir: str) -> list[str]:
    """What a run tells the user on stderr, without timings, progress bars and its run directory."""
    lines = []
    for line in text.replace(run_dir, "<run>").splitlines():
        if "it/s" in line or line.startswith(("Training:", "Validation", "Epoch", "Sanity")):
            continue
        lines.append(re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+|[\d.]+ ?s\b|'wall_time_s': [\d.]+", "<t>", line))
    return lines


def test_a_forked_run_tells_the_user_what_a_new_interpreter_does(tmp_path):
    args = ["dataset=synthetic", "search_space.input_size=8", "trainer.max_steps=1", "trainer.limit_val_batches=1",
            "system.val_archs=1", "system.val_bn_batches=1", "logger=none",
            "trainer.enable_progress_bar=false"]  # fmt: skip
    forked = run_entry("train.py", *args, f"hydra.run.dir={tmp_path / 'run'}")
    fresh = run_entry("train.py", *args, f"hydra.run.dir={tmp_path / 'run2'}", fresh=True)
    assert forked.returncode == fresh.returncode == 0, (forked.stderr[-2000:], fresh.stderr[-2000:])
    told = _told(forked.stderr, str(tmp_path / "run")), _told(fresh.stderr, str(tmp_path / "run2"))
    assert told[0] == told[1]
    assert any("GPU available" in line for line in told[0])  # Lightning's own log lines
    assert any(re.search(r"\.py:\d+: ", line) for line in told[0])  # warnings are printed, not recorded by pytest
    assert _told(forked.stdout, str(tmp_path / "run")) == _told(fresh.stdout, str(tmp_path / "run2"))
