"""A run's checkpoints: reading them safely, writing them atomically, and saving one when a run is interrupted.

Reading: checkpoints are loaded with ``weights_only=True``, so only tensors and plain data can come
out of them, never code. Everything needed to rebuild the supernet (search space, data shape,
dataset, seed) is the run record (:class:`fairnas.run.record.RunRecord`) the training system stores
under ``checkpoint["fairnas"]``; it is validated field by field, and nothing it names is instantiated.

Writing: :class:`AtomicCheckpointIO` replaces a checkpoint in one rename once the new file is
complete. :class:`SaveOnInterrupt` saves the state of a finished step when SIGTERM, Ctrl+C or a SLURM
requeue signal stops training.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from fairnas.errors import CheckpointError
from fairnas.models import SearchSpace, Supernet
from fairnas.models.space import ArchitectureError, SearchSpaceError
from fairnas.run.record import RunRecord, RunRecordError
from fairnas.utils.io import write_atomic
from fairnas.utils.slurm import REQUEUE_SIGNALS, to_signal
from fairnas.utils.slurm import requeue_signals as slurm_requeue

__all__ = [
    "AtomicCheckpointIO",
    "SaveOnInterrupt",
    "file_digest",
    "load_checkpoint",
    "load_supernet",
    "load_weights",
    "record_space",
    "supernet_from_checkpoint",
    "read_record",
    "refuse_nonfinite",
]

log = logging.getLogger("fairnas")


# ---------------------------------------------------------------------------------- reading
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


def load_supernet(path: str | Path, allow_blocks: Sequence[str] = ()) -> tuple[Supernet, RunRecord]:
    """The trained supernet (on the CPU, eval mode) and the run record of a training checkpoint.

    ``allow_blocks``: block kinds of a user's own module the checkpoint's space may use (see
    :meth:`RunRecord.space`); nothing a checkpoint names is imported otherwise.
    """
    ckpt = load_checkpoint(path)
    record = read_record(ckpt, path)
    return supernet_from_checkpoint(ckpt, record, path, allow_blocks), record


def supernet_from_checkpoint(
    ckpt: dict[str, Any], record: RunRecord, path: str | Path, allow_blocks: Sequence[str] = ()
) -> Supernet:
    """The supernet of a checkpoint already read by :func:`load_checkpoint` (on the CPU, eval mode)."""
    if record.arch:
        raise CheckpointError(
            f"{path} holds a stand-alone network (arch={record.arch}), not a supernet: search needs a supernet "
            "checkpoint (train.py without arch=...)"
        )
    space = record_space(record, path, allow_blocks)
    supernet = Supernet(space, record.num_classes, record.in_channels)
    load_weights(supernet, ckpt, "supernet.", path, f"its own search space {space.name!r}")
    return supernet.eval()


def record_space(record: RunRecord, path: str | Path, allow_blocks: Sequence[str] = ()) -> SearchSpace:
    """The search space of a checkpoint's record; an invalid one is a :class:`CheckpointError` naming the file."""
    try:
        return record.space(allow_blocks)
    except (RunRecordError, SearchSpaceError, ArchitectureError) as err:
        raise CheckpointError(f"{path} holds an invalid run record ({err})") from None


def load_weights(module: torch.nn.Module, ckpt: dict[str, Any], prefix: str, path: str | Path, what: str) -> None:
    """Loads the checkpoint's tensors under ``prefix`` into ``module``: refused when not finite, or not ``what``
    the module is (a :class:`CheckpointError` saying "<path> does not match <what>")."""
    state = {k.removeprefix(prefix): v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    refuse_nonfinite(path, state)
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not match {what}: {err}") from None


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


# ---------------------------------------------------------------------------------- writing
class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves each checkpoint to a temporary file beside it, fsyncs it, renames it over the old one.

    Lightning's own ``TorchCheckpointIO`` writes through fsspec, which stages the file in
    ``$TMPDIR`` and then *moves* it: when the run directory is on another filesystem the move
    becomes "truncate the destination, copy", so a kill during the copy left a 0-byte
    ``last.ckpt``, a full disk a truncated one, and a small ``$TMPDIR`` failed every save. Here
    ``last.ckpt`` is replaced in one rename once the new file is complete: at any moment it is
    either the previous checkpoint or the new one. A full disk or an unwritable folder raises
    :class:`fairnas.utils.io.StorageError` naming the path, with the previous checkpoint intact.
    Remote paths (``s3://...``) go to Lightning's implementation.

    Pass it to the Trainer as a plugin (``conf/trainer/default.yaml`` does).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        write_atomic(Path(path), lambda f: torch.save(checkpoint, f), what="checkpoint")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# ---------------------------------------------------------------------------------- the interrupt save
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
    resumes it. With the Trainer's :class:`AtomicCheckpointIO` plugin
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
