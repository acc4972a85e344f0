"""Saving the training state when a run is interrupted (SIGTERM, Ctrl+C, a SLURM job's requeue signal)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from fairnas.utils.slurm import REQUEUE_SIGNALS, to_signal
from fairnas.utils.slurm import requeue_signals as slurm_requeue

log = logging.getLogger("fairnas")


class SaveOnInterrupt(Callback):
    """On SIGTERM or Ctrl+C during training, writes a checkpoint of the state reached, then lets the run end.

    Lightning turns SIGTERM into an exception at the next batch boundary (on every rank at once
    under DDP), so the state saved is that of a finished optimizer step. Ctrl+C (SIGINT) would
    raise ``KeyboardInterrupt`` wherever the process is, possibly halfway through an update (BN
    statistics moved, weights not yet stepped): while training runs, this callback makes the first
    Ctrl+C stop the run the way SIGTERM does, after the step in progress, and records it in
    :attr:`stopped_by` (``train.py`` exits with 128 + that signal: 130 for Ctrl+C, 143 for SIGTERM).
    A second Ctrl+C quits at once without saving (the last checkpoint written before stays). A
    process that started with Ctrl+C ignored (a script's background job) keeps ignoring it.

    The file replaces ``last.ckpt`` in the checkpoint folder, where ``ckpt_path=.../last.ckpt``
    resumes it. With the Trainer's :class:`~fairnas.utils.checkpoint_io.AtomicCheckpointIO` plugin
    (``conf/trainer/default.yaml``) it is written to a temporary file beside it and renamed, so an
    interruption during the save cannot corrupt it.

    Why not Lightning's ``OnExceptionCheckpoint``: it saves on *every* exception, so a NaN stop or a
    bug would overwrite ``last.ckpt`` with a state that should not be resumed; it needs a fixed
    ``dirpath`` instead of following the ModelCheckpoint's folder; and its ``teardown`` deletes the
    file it wrote. This callback saves only on an interruption of fit, and keeps the file.

    In a SLURM job, the *requeue signals* (``SIGUSR1``, ``SIGUSR2``: what SLURM sends some time before
    a time limit or a pre-emption, as ``--signal`` asks) stop training the same way, at a step
    boundary, on every rank at the same step (the ranks agree on it at each step's end, so a signal
    that reached one rank, or reached them at different moments, stops them all after the same
    step), and :attr:`requeue` says so: ``train.py`` then requeues the job (rank 0, once) and the
    requeued job continues from the saved state. The signals are recorded by
    :data:`fairnas.utils.slurm.requeue_signals`, which replaces submitit's handler (a requeue
    without a checkpoint) and Lightning's (a checkpoint saved in the middle of a step).

    Args:
        dirpath: Folder of the checkpoint (default: the ModelCheckpoint folder, else
            ``<default_root_dir>/checkpoints``).
        filename: Name of the file.
        requeue_signals: Signal names that mean "save, stop and requeue" in a SLURM job.
    """

    def __init__(
        self, dirpath: str | None = None, filename: str = "last.ckpt", requeue_signals: Any = REQUEUE_SIGNALS
    ) -> None:
        self.dirpath = dirpath
        self.filename = filename
        self.requeue_signals = tuple(to_signal(s) for s in requeue_signals or ())
        self.stopped_by: signal.Signals | None = None  # the signal that stopped the last fit, if any
        self._previous_sigint: Any = None
        self._sigint_installed = False
        self._watching = False  # requeue signals handled (in a SLURM job): every rank checks them at every step

    @property
    def requeue(self) -> bool:
        """Whether the last fit stopped for a requeue signal (the job should be requeued)."""
        return self.stopped_by in self.requeue_signals

    # ----------------------------------------------------------------- SLURM's requeue signals
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Before Lightning registers its signal handlers for fit: with ours in place, it adds no requeue handler.
        if stage == "fit" and self.requeue_signals:
            self._watching = slurm_requeue.install(self.requeue_signals)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if not self._watching:
            return
        requested = int(slurm_requeue.requested or 0)
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank takes part at every step (all of them run this), so all stop after the same step.
            flag = torch.tensor([requested], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            requested = int(flag.item())
        if requested and self.stopped_by is None:
            self.stopped_by = signal.Signals(requested)
            # Lightning's SIGTERM stop, without its handler (which starts a collective inside the signal
            # handler): every rank raises SIGTERMException at the start of the next step, or at the epoch's end.
            trainer._signal_connector.received_sigterm = True

    # ----------------------------------------------------------------- Ctrl+C as a clean stop
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stopped_by = None
        # Only where Lightning handles SIGTERM (it registers its handler for fit, on the main thread),
        # and not where Ctrl+C is ignored: a script's background job (python train.py &) inherits SIGINT
        # ignored, so that Ctrl+C stops only the foreground command, and keeps it so, as Python does.
        main = threading.current_thread() is threading.main_thread()
        ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        if main and callable(signal.getsignal(signal.SIGTERM)) and not ignored:
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)
            self._sigint_installed = True

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.stopped_by == signal.SIGINT:  # pressed again: quit now, no save (the state may be half a step)
            self._restore_sigint()
            raise KeyboardInterrupt
        self.stopped_by = signal.SIGINT
        log.warning("Ctrl+C: stopping after the current step and saving it (press Ctrl+C again to quit without saving)")
        # Lightning's SIGTERM path: a stop at the next batch boundary, broadcast to every DDP rank.
        os.kill(os.getpid(), signal.SIGTERM)

    def _restore_sigint(self) -> None:
        if self._sigint_installed:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._sigint_installed = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_of_training()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._end_of_training()
        else:
            self._restore_sigint()

    def _end_of_training(self) -> None:
        if self._watching:
            slurm_requeue.training_ended = True
        self._restore_sigint()

    # ----------------------------------------------------------------- the save
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._end_of_training()
        # A KeyboardInterrupt (outside training, or a second Ctrl+C) can hit in the middle of an
        # update: saving that state would make a checkpoint no run ever reached.
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        if self.stopped_by is None:
            self.stopped_by = signal.SIGTERM
        folder = self.dirpath or getattr(trainer.checkpoint_callback, "dirpath", None)
        path = Path(folder or Path(trainer.default_root_dir) / "checkpoints") / self.filename
        trainer.save_checkpoint(path, weights_only=False)  # the full training state, to resume from
        log.warning("interrupted at step %d: state saved to %s (resume with ckpt_path=%s)", trainer.global_step,
                    path, path)  # fmt: skip
