"""Continuing a run: which checkpoint ``ckpt_path=last`` means, whether it may be continued with this
run's settings, and the exact place training continues from.

Lightning writes checkpoints from different places of its loop: after a training step
(``every_n_train_steps``, SIGTERM), at the end of an epoch, and at the end of training, where an
epoch that ``max_steps`` cut short is counted as finished. Its restore logic reads each of these
differently, and resumes a ``max_steps`` checkpoint at the NEXT epoch, skipping the rest of the
cut one. :func:`align_loop_state` rewrites the training loop's counters of a loaded checkpoint into
the one form Lightning restores exactly (that of a checkpoint written right after a training step)
for the position the checkpoint really is at (:func:`checkpoint_position`); the system hands the
same position to the datamodule, which skips the batches already trained.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairnas.errors import CheckpointError, ConfigError
from fairnas.run.checkpoint import load_checkpoint, read_record
from fairnas.run.record import Change, RunRecord, now_utc

__all__ = [
    "ALLOW_ON_RESUME",
    "NEVER_ALLOWED",
    "ResumePoint",
    "align_loop_state",
    "check_resume",
    "checkpoint_position",
    "differences",
    "find_resume_point",
    "nothing_to_train",
    "resume_record",
]

log = logging.getLogger("fairnas")

_EPOCHS = "epoch_progress"
_BATCHES = "epoch_loop.batch_progress"


def _fit_loop(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    loop = (checkpoint.get("loops") or {}).get("fit_loop")
    return loop if loop and _EPOCHS in loop and _BATCHES in loop else None


def checkpoint_position(checkpoint: dict[str, Any]) -> tuple[int, int]:
    """Where training continues from ``checkpoint``: ``(epoch, batches of it already trained)``, from the
    fit loop's counters; ``(e, 0)`` is the start of epoch ``e``. The one place the data position is
    computed: the system hands it to the datamodule on restore, which skips those batches."""
    loop = _fit_loop(checkpoint)
    if loop is None:
        return 0, 0
    epochs, batches = loop[_EPOCHS]["current"], loop[_BATCHES]
    started, completed = int(epochs["started"]), int(epochs["completed"])
    if started == 0:
        return completed, 0
    if batches["is_last_batch"]:  # the epoch's data ran out; one that max_steps cut short did not
        return started, 0
    return started - 1, int(batches["current"]["processed"])


def _counters(started: int, processed: int, completed: int) -> dict[str, int]:
    # Lightning's progress counters: ready >= started >= processed >= completed.
    return {"ready": started, "started": started, "processed": processed, "completed": completed}


def align_loop_state(checkpoint: dict[str, Any]) -> tuple[int, int]:
    """Rewrites, in place, the fit loop state of a checkpoint being restored into the form Lightning
    writes right after a training step, for the checkpoint's real position; returns that position.

    Mid-epoch ``(e, b)``: epoch ``e`` started and not processed, its ``b``-th batch trained and its
    end-of-batch hooks not yet counted. At an epoch start ``(e, 0)``: the same, after the last batch
    of epoch ``e - 1`` (Lightning then finishes that epoch's bookkeeping and starts epoch ``e``).
    Lightning's own step checkpoints already have this form and are left as they are; the global
    step, optimizer and scheduler counters are never touched.
    """
    loop = _fit_loop(checkpoint)
    epoch, batches = checkpoint_position(checkpoint)
    if loop is None or (epoch, batches) == (0, 0):
        return epoch, batches
    progress = loop[_BATCHES]
    stepped = loop.get("epoch_loop.state_dict", {})
    if progress["total"]["completed"] != progress["total"]["processed"] - 1 and "_batches_that_stepped" in stepped:
        # Lightning counts the batch of a step checkpoint as logged on restore; the other forms had counted it.
        stepped["_batches_that_stepped"] -= 1
    if batches > 0:
        epochs = _counters(epoch + 1, epoch, epoch)
        in_epoch, ended = batches, False
    else:  # right after the last batch of the previous epoch: as many batches as it had
        epochs = _counters(epoch, epoch - 1, epoch - 1)
        in_epoch, ended = progress["current"]["processed"], True
    loop[_EPOCHS] = {"total": dict(epochs), "current": epochs}
    total = max(progress["total"]["processed"], in_epoch)
    progress["current"] = _counters(in_epoch, in_epoch, in_epoch - 1)
    progress["total"] = _counters(total, total, total - 1)
    progress["is_last_batch"] = ended
    return epoch, batches


def nothing_to_train(checkpoint: dict[str, Any], max_steps: int | None, max_epochs: int | None) -> str | None:
    """Why continuing ``checkpoint`` with these limits would train nothing, or None when it trains something."""
    step = int(checkpoint.get("global_step", 0))
    epoch, batches = checkpoint_position(checkpoint)
    if max_steps is not None and max_steps >= 0 and step >= max_steps:
        return f"it is at step {step} and trainer.max_steps={max_steps}"
    if max_epochs is None and (max_steps is None or max_steps < 0):
        max_epochs = 1000  # Lightning's default when neither limit is set
    if max_epochs is not None and max_epochs >= 0 and epoch >= max_epochs:  # Lightning ends a started epoch there too
        return f"it has finished {epoch} epoch{'s' if epoch != 1 else ''} and trainer.max_epochs={max_epochs}"
    return None


# ---------------------------------------------------------------------------------- which checkpoint
@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint to continue, read once: its path and its contents (tensors memory-mapped)."""

    path: str
    checkpoint: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.checkpoint.get("global_step", -1))

    def record(self) -> RunRecord:
        return read_record(self.checkpoint, self.path)


def find_resume_point(ckpt_path: str | None, out_dir: str | Path) -> ResumePoint | None:
    """The checkpoint a run continues from, read once; None for a fresh start.

    ``ckpt_path=last`` is the checkpoint of the run directory ``out_dir`` furthest in training (the
    periodic or interrupt ``checkpoints/last.ckpt``, or an ``hpc_ckpt_<n>.ckpt`` that Lightning's own
    SLURM requeue wrote), or a fresh start if there is none; any other path is that checkpoint.

    Raises:
        ConfigError: ``last`` is ambiguous (several runs' last checkpoints) or one candidate is unreadable.
        CheckpointError: the checkpoint given is missing or not a fairnas checkpoint.
    """
    if ckpt_path is None:
        return None
    if ckpt_path != "last":
        return ResumePoint(str(ckpt_path), load_checkpoint(ckpt_path))
    out_dir = Path(out_dir)
    others = sorted((out_dir / "checkpoints").glob("last-v*.ckpt"))
    if others:  # Lightning's name for the last checkpoint of a second run started in the same directory
        raise ConfigError(
            f"ckpt_path=last: {out_dir} holds the last checkpoints of more than one run ("
            f"{', '.join(p.name for p in [out_dir / 'checkpoints' / 'last.ckpt', *others] if p.is_file())}): "
            "give the one to continue as ckpt_path=<file>"
        )
    last = out_dir / "checkpoints" / "last.ckpt"
    found = [p for p in [last, *out_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    if not found:
        log.info("ckpt_path=last: no checkpoint in %s yet, starting from scratch", out_dir)
        return None
    points = {p: _candidate(p) for p in found}
    # The one furthest in training (not the newest file: a copy or a restore changes file times);
    # at the same step, last.ckpt (fairnas writes it at a step boundary), then the newest.
    chosen = max(found, key=lambda p: (points[p].step, p == last, p.stat().st_mtime_ns))
    log.info("ckpt_path=last: resuming from %s (step %d)", chosen, points[chosen].step)
    return points[chosen]


def _candidate(path: Path) -> ResumePoint:
    try:
        return ResumePoint(str(path), load_checkpoint(path))
    except CheckpointError as error:
        raise ConfigError(
            f"ckpt_path=last: {error}. Move it out of the run directory, or give the checkpoint to continue as "
            "ckpt_path=<file>"
        ) from None


def check_resume(
    point: ResumePoint, record: RunRecord, allow: Sequence[str] | str, max_steps: int | None, max_epochs: int | None
) -> RunRecord:
    """Refuses, before any training, a checkpoint of another space, kind of run or training recipe, and one
    whose trainer limits are already reached; returns the record to continue with (the saved provenance,
    this resume added to its history)."""
    resumed = resume_record(point.record(), record, point.path, allow)
    reason = nothing_to_train(point.checkpoint, max_steps, max_epochs)
    if reason is not None:
        raise ConfigError(
            f"continuing {point.path} would train nothing: {reason}. Raise trainer.max_steps or trainer.max_epochs "
            "to train further (the checkpoint and results of that run are left as they are)"
        )
    return resumed


# ---------------------------------------------------------------------------------- the settings
# Differences a resume may never be allowed: the weights' shape (search space, arch), and the
# optimizer and scheduler, whose saved state a resume restores over any new setting.
NEVER_ALLOWED = ("search_space", "arch", "optimizer", "scheduler")
# The default of train.py's resume_allow: extending (or shortening) the budget is what resuming is for.
ALLOW_ON_RESUME = ("trainer.max_steps", "trainer.max_epochs", "max_paths")


def differences(saved: RunRecord, now: RunRecord) -> list[tuple[str, Any, Any]]:
    """``(key, saved, now)`` for each compared setting that differs (a missing one is ``'(unset)'``).

    A schema-0 record lacks the sampler and recipe: only the settings it holds are compared.
    """
    a, b = saved.flat(), now.flat()
    keys = [k for k in a if k in b] if saved.recipe is None else list(dict.fromkeys([*a, *b]))
    return [(k, a.get(k, "(unset)"), b.get(k, "(unset)")) for k in keys if a.get(k, _MISSING) != b.get(k, _MISSING)]


_MISSING = object()


def _allowed(key: str, allow: Sequence[str]) -> bool:
    return any(key == a or key.startswith(f"{a}.") for a in allow)


def resume_record(
    saved: RunRecord, now: RunRecord, checkpoint: str, allow: Sequence[str] | str = ALLOW_ON_RESUME
) -> RunRecord:
    """The record to continue with when ``now``'s run resumes from a checkpoint holding ``saved``.

    Refuses, before any training, a checkpoint of another space or kind of run, and any
    difference in a compared setting that ``allow`` does not name (a key or a key prefix,
    e.g. ``trainer.max_steps``, ``sampler``); the optimizer and scheduler can never be allowed
    (the checkpoint's optimizer state would silently override them). The returned record is
    ``now`` with the saved provenance and, appended to its history, this resume and the
    allowed changes.

    Raises:
        ConfigError: the runs differ, with every difference as ``key: saved -> now``.
    """
    allow = [allow] if isinstance(allow, str) else [str(a) for a in allow or ()]
    if saved.search_space != now.search_space:
        name = saved.search_space.get("name")
        raise ConfigError(
            f"{checkpoint} was trained with search space {name!r} (or other settings of it), not "
            f"{now.search_space.get('name')!r} as configured: resume with the same search_space and overrides"
        )
    if saved.arch != now.arch:
        raise ConfigError(
            f"{checkpoint} is from a run with arch={saved.arch}, this one has arch={now.arch}: "
            "resume with the same arch (or none, for a supernet)"
        )
    diffs = differences(saved, now)
    refused = [d for d in diffs if not _allowed(d[0], allow) or _allowed(d[0], NEVER_ALLOWED)]
    if refused:
        lines = "\n".join(f"  {key}: {_show(old)} -> {_show(new)}" for key, old, new in refused)
        allowable = [k for k, _, _ in refused if not _allowed(k, NEVER_ALLOWED)]
        allowable = [
            k for k in allowable if not _allowed(k, [a for a in allowable if a != k])
        ]  # sampler covers sampler.*
        hint = ""
        if allowable:
            keep = [a for a in allow if not _allowed(a, NEVER_ALLOWED)]
            hint = f" To continue with a change on purpose, allow it: resume_allow=[{','.join([*keep, *allowable])}]."
        if len(allowable) < len(refused):
            hint += (
                " The optimizer and scheduler cannot change on resume (the checkpoint's optimizer state would "
                "override them): start a new run for those."
            )
        raise ConfigError(
            f"cannot resume from {checkpoint}: this run's training settings differ from the checkpoint's "
            f"(saved -> now):\n{lines}\nResume with the checkpoint's settings, or start a new run in another "
            f"hydra.run.dir.{hint}"
        )
    note = "" if saved.schema_version else (
        "upgraded from a schema-0 checkpoint: its sampler and recipe were not recorded, so they were not checked"
    )  # fmt: skip
    change = Change(
        time=now_utc(),
        git_commit=now.provenance.git_commit,
        checkpoint=str(checkpoint),
        changes={k: [old, new] for k, old, new in diffs},
        note=note,
    )
    provenance = dataclasses.replace(
        saved.provenance,
        created=saved.provenance.created or now.provenance.created,
        history=(*saved.provenance.history, change),
    )
    return dataclasses.replace(now, provenance=provenance)


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) and value != "(unset)" else str(value)
    return text if len(text) <= 200 else text[:197] + "..."
