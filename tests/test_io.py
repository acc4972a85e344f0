"""Atomic result writes: readable like ordinary files, and never half-written."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from fairnas.utils.io import write_json_atomic, write_text_atomic


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_an_atomic_write_gets_the_permissions_of_an_ordinary_one(tmp_path: Path, umask: int):
    previous = os.umask(umask)
    try:
        (tmp_path / "plain.txt").write_text("x")
        write_json_atomic(tmp_path / "results.json", {"val/acc": 0.9})
        assert os.umask(umask) == umask  # the write left the process's umask as it was
    finally:
        os.umask(previous)
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == expected == 0o666 & ~umask
    assert json.loads((tmp_path / "results.json").read_text()) == {"val/acc": 0.9}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path):
    path = write_text_atomic(tmp_path / "report.md", "old\n")
    with pytest.raises(TypeError):
        write_text_atomic(path, None)  # type: ignore[arg-type]
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
