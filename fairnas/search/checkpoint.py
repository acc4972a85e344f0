"""Reading a trained supernet back from a checkpoint, safely.

Checkpoints are loaded with ``weights_only=True``: only tensors and plain data can come out of
them, never code. Everything needed to rebuild the supernet (search space, data shape, dataset,
seed) is the run record (:class:`fairnas.run_record.RunRecord`) the training system stores under
``checkpoint["fairnas"]``; it is validated field by field, and nothing it names is instantiated.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from fairnas.errors import CheckpointError
from fairnas.models import Supernet
from fairnas.models.space import ArchitectureError, SearchSpaceError
from fairnas.run_record import RunRecord, RunRecordError


def file_digest(path: str | Path, limit: int = 1 << 30) -> str:
    """SHA-256 of a file (of its first ``limit`` bytes and its size, for huge files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(limit))
    h.update(str(Path(path).stat().st_size).encode())
    return h.hexdigest()[:16]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dictionary (weights_only), with one clear error for every way it can be bad."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: give ckpt_path=<run dir>/checkpoints/last.ckpt")
    try:
        # mmap: tensors are read when used, so a caller that only needs the metadata reads little.
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, foreign pickle, code-bearing objects refused by weights_only
        raise CheckpointError(
            f"cannot read checkpoint {path} safely ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            "It is truncated, corrupt, or not a checkpoint written by fairnas train.py (checkpoints that need "
            "code to load are refused)."
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "fairnas" not in ckpt:
        raise CheckpointError(f"{path} is not a fairnas checkpoint (no 'fairnas' metadata): train it with train.py")
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a fairnas checkpoint (its state_dict is not a mapping of tensors)")
    return ckpt


def read_record(ckpt: dict[str, Any], path: str | Path) -> RunRecord:
    """The validated run record of a checkpoint loaded by :func:`load_checkpoint`."""
    try:
        return RunRecord.from_dict(ckpt["fairnas"])
    except RunRecordError as err:
        raise CheckpointError(
            f"{path} holds an invalid run record ({err}). It was not written by fairnas train.py or was altered; "
            "nothing it names was built or run"
        ) from None


def load_supernet(path: str | Path) -> tuple[Supernet, RunRecord]:
    """The trained supernet (on the CPU, eval mode) and the run record of a training checkpoint."""
    ckpt = load_checkpoint(path)
    record = read_record(ckpt, path)
    if record.arch:
        raise CheckpointError(
            f"{path} holds a stand-alone network (arch={record.arch}), not a supernet: search needs a supernet "
            "checkpoint (train.py without arch=...)"
        )
    try:
        space = record.space()
    except (RunRecordError, SearchSpaceError, ArchitectureError) as err:
        raise CheckpointError(f"{path} holds an invalid run record ({err})") from None
    supernet = Supernet(space, record.num_classes, record.in_channels)
    state = {k.removeprefix("supernet."): v for k, v in ckpt["state_dict"].items() if k.startswith("supernet.")}
    refuse_nonfinite(path, state)
    try:
        supernet.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not match its own search space {space.name!r}: {err}") from None
    return supernet.eval(), record


def refuse_nonfinite(path: str | Path, state: dict[str, Any]) -> None:
    """Refuses weights or buffers holding NaN/inf: every accuracy measured with them would be meaningless."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CheckpointError(
            f"{path} holds NaN/inf in {len(bad)} weight or statistics tensors ({shown}): the training diverged "
            "before it was saved, and nothing measured with it would mean anything. Use a checkpoint from before "
            "the divergence (train.py's checkpoints/last_good.ckpt is checked finite), or retrain with a lower "
            "optimizer.lr."
        )
