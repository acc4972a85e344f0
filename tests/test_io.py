"""Atomic result writes: readable like ordinary files, and never half-written."""

from __future__ import annotations

import json
import os
import shutil
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


# ---------------------------------------------------------------- checkpoints: atomic, across filesystems

_SLOW_SAVE = r"""
import io, shutil, sys, time, torch
from fairnas.run.checkpoint import AtomicCheckpointIO
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

path, which = sys.argv[1:]
plugin = AtomicCheckpointIO() if which == "fairnas" else TorchCheckpointIO()
plugin.save_checkpoint({"step": 1, "w": torch.ones(4)}, path)

def slow_write(data, f):  # a slow disk: bytes arrive in small pieces
    if isinstance(f, io.BytesIO):  # memory is fast
        return f.write(data)
    for start in range(0, len(data), 4096):
        f.write(data[start : start + 4096])
        f.flush()
        if start == 4096:
            print("writing", flush=True)
        time.sleep(0.01)

real_save = torch.save
def slow_save(obj, f):
    buffer = io.BytesIO()
    real_save(obj, buffer)
    slow_write(buffer.getvalue(), f)

def slow_copyfileobj(src, dst, length=0):  # a copy from $TMPDIR onto the run directory's disk
    slow_write(src.read(), dst)

torch.save = slow_save
shutil.copyfileobj = slow_copyfileobj
shutil._USE_CP_SENDFILE = False
plugin.save_checkpoint({"step": 2, "w": torch.randn(1 << 20)}, path)
print("saved", flush=True)
"""


def test_a_sigkill_during_a_save_on_another_filesystem_than_tmpdir_leaves_a_loadable_checkpoint(tmp_path: Path):
    import signal
    import subprocess
    import sys

    import torch
    from conftest import ROOT

    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's run directory")
    tmpdir = shm / f"fairnas-test-{os.getpid()}"
    tmpdir.mkdir(exist_ok=True)
    path = tmp_path / "checkpoints" / "last.ckpt"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SLOW_SAVE, str(path), "fairnas"],
            env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmpdir)},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline() == "writing\n"  # the second save is under way
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert [p for p in tmpdir.iterdir() if p.is_file()] == []  # nothing was staged in $TMPDIR
    finally:
        proc.kill()
        shutil.rmtree(tmpdir)
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(path, weights_only=True)["step"] == 1  # the previous checkpoint, whole


def test_checkpoints_never_go_through_tmpdir(tmp_path: Path, monkeypatch):
    import tempfile

    import torch

    from fairnas.run.checkpoint import AtomicCheckpointIO

    # A $TMPDIR that cannot hold the checkpoint (here: does not exist) made every Lightning save fail.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmpdir"))
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 3}, path)
    assert torch.load(path, weights_only=True) == {"step": 3}
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize(("code", "reason"), [(28, "the disk is full"), (30, "the filesystem is read-only")])
def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch, code, reason):
    import errno

    import fairnas.run.checkpoint as checkpoint_io
    from fairnas.run.checkpoint import AtomicCheckpointIO
    from fairnas.utils import StorageError

    assert code in (errno.ENOSPC, errno.EROFS)
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    before = path.read_bytes()

    def full_disk(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(checkpoint_io.torch, "save", full_disk)
    with pytest.raises(StorageError, match=f"cannot write the checkpoint {path}: {reason}"):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


_FULL_DISK_TRAIN = r"""
import errno, os, runpy, sys
import fairnas.utils.io as io

real = io.write_atomic
saves = []

def write_atomic(path, write, what="file"):
    if what == "checkpoint":
        saves.append(path)
        if len(saves) == 2:  # the second checkpoint meets a full disk, half written
            return real(path, lambda f: (f.write(b"half"), _raise()), what)
    return real(path, write, what)

def _raise():
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

io.write_atomic = write_atomic
import fairnas.run.checkpoint as checkpoint_io
checkpoint_io.write_atomic = write_atomic
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_train_py_on_a_full_disk_says_so_and_keeps_the_last_checkpoint(tmp_path: Path):
    import subprocess
    import sys

    import torch
    from conftest import ROOT

    proc = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_TRAIN, str(ROOT / "train.py"), "dataset=synthetic", "dataset.batch_size=16",
         "dataset.num_train=256", "trainer.max_steps=3", "trainer.limit_val_batches=0", "logger=none",
         "callbacks.model_checkpoint.every_n_train_steps=1", f"hydra.run.dir={tmp_path}"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    path = tmp_path / "checkpoints" / "last.ckpt"
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"StorageError: cannot write the checkpoint {path}: the disk is full" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_results_json_is_strict_json_with_null_for_nan(tmp_path: Path):
    path = write_json_atomic(tmp_path / "results.json", {"val/loss": float("nan"), "x": [float("inf"), 1.5]})
    assert path.read_text().count("null") == 2
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == {
        "val/loss": None,
        "x": [None, 1.5],
    }
