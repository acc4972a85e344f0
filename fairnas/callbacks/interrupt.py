"""Saving the training state when a run is interrupted (SIGTERM from a scheduler, Ctrl+C)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger("fairnas")


class SaveOnInterrupt(Callback):
    """On SIGTERM or Ctrl+C during fit, writes a checkpoint of the state reached, then lets the run end.

    Lightning turns SIGTERM into an exception at the next batch boundary (on every rank at once
    under DDP), so the state saved is that of a finished optimizer step. The file replaces
    ``last.ckpt`` in the checkpoint folder, where ``ckpt_path=.../last.ckpt`` resumes it. With the
    Trainer's :class:`~fairnas.utils.checkpoint_io.AtomicCheckpointIO` plugin (``conf/trainer/default.yaml``)
    it is written to a temporary file beside it and renamed, so an interruption during the save
    cannot corrupt it.

    Why not Lightning's ``OnExceptionCheckpoint``: it saves on *every* exception, so a NaN stop or a
    bug would overwrite ``last.ckpt`` with a state that should not be resumed; it needs a fixed
    ``dirpath`` instead of following the ModelCheckpoint's folder; and its ``teardown`` deletes the
    file it wrote. This callback saves only on an interruption of fit, and keeps the file.

    Args:
        dirpath: Folder of the checkpoint (default: the ModelCheckpoint folder, else
            ``<default_root_dir>/checkpoints``).
        filename: Name of the file.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "last.ckpt") -> None:
        self.dirpath = dirpath
        self.filename = filename

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException | KeyboardInterrupt) or trainer.state.fn != "fit":
            return
        folder = self.dirpath or getattr(trainer.checkpoint_callback, "dirpath", None)
        path = Path(folder or Path(trainer.default_root_dir) / "checkpoints") / self.filename
        trainer.save_checkpoint(path, weights_only=False)  # the full training state, to resume from
        log.warning("interrupted at step %d: state saved to %s (resume with ckpt_path=%s)", trainer.global_step,
                    path, path)  # fmt: skip
