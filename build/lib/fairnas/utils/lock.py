"""One run per run directory: an exclusive lock held while a run is alive."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import IO

from fairnas.errors import RunDirInUse

__all__ = ["LOCK_NAME", "RunDirInUse", "lock_run_dir", "secondary_rank"]

LOCK_NAME = ".run.lock"
# Set by the launchers that start more processes of one run (torchrun, Lightning's DDP launcher, SLURM, LSF).
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def secondary_rank() -> bool:
    """Whether this process is a rank > 0 of a distributed run (it shares rank 0's directory and lock)."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "0").strip() or "0"
        if value.isdigit() and int(value) > 0:
            return True
    return False


def lock_run_dir(directory: str | Path) -> IO[str]:
    """Takes the run directory's lock (``<directory>/.run.lock``, ``fcntl.flock``) and returns the open file
    that holds it: the lock lasts until the file is closed or the process ends, however it ends.

    Raises:
        RunDirInUse: If another process holds it; the message names that process.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / LOCK_NAME, "a+")  # noqa: SIM115 - held open: the open file is the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunDirInUse(
            f"the run directory {directory} is in use by another run ({holder}): wait for it to end, "
            "or give this run its own directory (hydra.run.dir=<dir>)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle
