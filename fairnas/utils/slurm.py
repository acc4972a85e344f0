"""What a run needs to know about SLURM: is it a SLURM job, which job, how to requeue it, how many GPUs to ask for.

The pre-emption protocol of fairnas on SLURM (see ``SaveOnInterrupt`` and ``train.py``): the
scheduler sends a *requeue signal* some time before a time limit or a pre-emption (``#SBATCH
--signal=USR2@120`` from the submitit launcher, or ``USR1`` as Lightning users set it). Training
stops at the next step boundary on every rank, saves ``checkpoints/last.ckpt``, global rank 0
requeues the job once (:func:`requeue_job`), and the requeued job (``ckpt_path=last``) continues
exactly. Lightning's own SLURM auto-requeue (a checkpoint saved inside the signal handler, in the
middle of a step, as ``hpc_ckpt_<n>.ckpt``) and submitit's (a requeue with no checkpoint) stay off.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import threading
from types import FrameType

from fairnas.errors import ConfigError

__all__ = [
    "REQUEUE_SIGNALS",
    "RequeueSignals",
    "gpus_per_node",
    "in_slurm_job",
    "job_id",
    "requeue_job",
    "requeue_signals",
    "to_signal",
]

log = logging.getLogger("fairnas")

# What SLURM sends before a time limit or a pre-emption, as the submitit launcher (USR2) or a
# Lightning user (USR1) asks for it with --signal. SIGTERM is not one of them: SLURM sends it to
# end a job (scancel, the limit itself), and a cancelled job must not come back.
REQUEUE_SIGNALS = ("SIGUSR1", "SIGUSR2")


def to_signal(name: str | int) -> signal.Signals:
    """``"USR1"``, ``"SIGUSR1"`` or ``10`` as a signal."""
    if isinstance(name, int) or str(name).isdigit():
        return signal.Signals(int(name))
    text = str(name).upper()
    try:
        return signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]
    except KeyError:
        raise ConfigError(f"{name!r} is not a signal name (e.g. USR1, SIGUSR2)") from None


class RequeueSignals:
    """Records SLURM's requeue signals for the life of a job's process (signal handlers are the process's).

    Installed as early as the program can (when ``fairnas.cli`` is imported, before torch; again when
    ``train.py`` starts, and by ``SaveOnInterrupt`` at the start of fit): a signal that arrives while
    the job is still starting (importing torch, building the run) is remembered and stops training
    after its first step,
    instead of killing the process (the default action of SIGUSR1/2) or reaching submitit's handler
    (a requeue without a checkpoint). One that arrives after training has ended is logged and
    ignored: the job finishes instead of coming back with nothing left to train.
    """

    def __init__(self) -> None:
        self.signals: tuple[signal.Signals, ...] = ()
        self.requested: signal.Signals | None = None
        self.training_ended = False

    def install(self, names: tuple[str | int, ...] | list[str | int] = REQUEUE_SIGNALS) -> bool:
        """Handles ``names`` in this process from now on (in a SLURM job, on the main thread); True if it does."""
        if not in_slurm_job() or threading.current_thread() is not threading.main_thread():
            return False
        self.signals = tuple(to_signal(n) for n in names)
        for signum in self.signals:
            signal.signal(signum, self._handle)
        return bool(self.signals)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.training_ended:
            log.warning("%s received after training ended: the job finishes instead of being requeued", name)
        elif self.requested is None:
            self.requested = signal.Signals(signum)
            log.warning("%s (time limit or pre-emption ahead): saving after the current step, then requeueing", name)


requeue_signals = RequeueSignals()  # the process's one recorder (a signal has one handler per process)


def in_slurm_job() -> bool:
    """Whether this process runs inside a SLURM job (a batch job or an allocation's step)."""
    return "SLURM_JOB_ID" in os.environ


def job_id() -> str | None:
    """The id to requeue: ``<array job>_<task>`` for a job array's task (the submitit launcher submits
    its sweeps as arrays), the job id otherwise; None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_job() -> bool:
    """``scontrol requeue`` this job; True if SLURM took it. A failure is logged with what to do."""
    job = job_id()
    if job is None or not re.fullmatch(r"[0-9_]+", job):
        log.error("cannot requeue: this process is not in a SLURM job (SLURM_JOB_ID=%r)", job)
        return False
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        log.error("cannot requeue SLURM job %s: scontrol is not on PATH", job)
        return False
    done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True)
    if done.returncode != 0:
        log.error("requeueing SLURM job %s failed (%s): the job ends here, its state saved; continue it with "
                  "ckpt_path=last. SLURM requeues only batch jobs submitted with --requeue (sbatch --requeue; "
                  "hydra/launcher=slurm sets it)", job, (done.stderr or done.stdout).strip())  # fmt: skip
        return False
    log.warning("requeued SLURM job %s: it continues from its last checkpoint when it starts again", job)
    return True


def first_set(*values: object) -> object:
    """The first of ``values`` that is set (not None), else 1: a count of tasks or nodes."""
    return next((v for v in values if v is not None), 1)


def gpus_per_node(accelerator: str | None, devices: int | str | None) -> int | None:
    """GPUs per node to ask SLURM for: one per device on a GPU accelerator, none on the CPU.

    ``auto`` asks for GPUs: the submitting machine (a login node) cannot tell what the compute
    nodes have. ``trainer.accelerator=cpu`` (or ``hydra.launcher.gpus_per_node=null``) asks for none.
    """
    name = str(accelerator or "auto").lower()
    if name in ("cpu", "mps", "tpu", "hpu"):
        return None
    if devices in (None, "auto", -1, "-1"):
        return None  # "all of the node's GPUs" has no count SLURM could reserve: set gpus_per_node yourself
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if isinstance(devices, list | tuple):
        return len(devices)
    return int(devices)
