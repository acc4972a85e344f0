"""Continuing a run exactly from any of its checkpoints.

Lightning writes checkpoints from different places of its loop: after a training step
(``every_n_train_steps``, SIGTERM), at the end of an epoch, and at the end of training, where an
epoch that ``max_steps`` cut short is counted as finished. Its restore logic reads each of these
differently, and resumes a ``max_steps`` checkpoint at the NEXT epoch, skipping the rest of the
cut one. :func:`align_loop_state` rewrites the training loop's counters of a loaded checkpoint into
the one form Lightning restores exactly (that of a checkpoint written right after a training step)
for the position the checkpoint really is at; the datamodule reads the same position to skip the
batches already trained (:func:`fairnas.data.base.data_position`).
"""

from __future__ import annotations

from typing import Any

from fairnas.data.base import data_position

__all__ = ["align_loop_state", "checkpoint_position", "nothing_to_train"]

_EPOCHS = "epoch_progress"
_BATCHES = "epoch_loop.batch_progress"


def _fit_loop(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    loop = (checkpoint.get("loops") or {}).get("fit_loop")
    return loop if loop and _EPOCHS in loop and _BATCHES in loop else None


def checkpoint_position(checkpoint: dict[str, Any]) -> tuple[int, int]:
    """``(epoch, batches of it already trained)`` where training continues from ``checkpoint``."""
    loop = _fit_loop(checkpoint)
    if loop is None:
        return 0, 0
    epochs, batches = loop[_EPOCHS]["current"], loop[_BATCHES]
    return data_position(epochs["started"], epochs["completed"], batches["current"]["processed"],
                         bool(batches["is_last_batch"]))  # fmt: skip


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
