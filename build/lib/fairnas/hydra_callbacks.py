"""Hydra callbacks of the entry points."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fairnas.utils.lock import RunDirInUse, lock_run_dir, secondary_rank


def _check_writable(directory: str, key: str) -> None:
    """Exits with one message (code 2) when ``directory`` cannot be created or written to.

    Hydra creates the run directory before any of our code runs and would otherwise end with
    its own traceback; nothing is written anywhere when this check fails.
    """
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        print(f"error: cannot write the output directory {directory} ({reason}): choose another with {key}=<dir>",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)


class OutputDirCheck(Callback):
    """Checks that the run (or sweep) directory is writable before Hydra creates it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_writable(str(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_writable(str(config.hydra.sweep.dir), "hydra.sweep.dir")


def _checkpoints(directory: Path) -> list[Path]:
    """The checkpoints a train.py run leaves in its directory (periodic/interrupt, and SLURM's)."""
    return sorted([*directory.glob("checkpoints/*.ckpt"), *directory.glob("hpc_ckpt_*.ckpt")])


class RunDirLock(Callback):
    """One run per run directory: holds ``<dir>/.run.lock`` while the run is alive, and refuses (exit code 2,
    before Hydra writes anything there) to start where another live run holds it.

    With ``resume_key`` (train.py: ``ckpt_path``), a run that continues no checkpoint of this directory also
    refuses a directory that already holds a run's checkpoints, which it would otherwise mix with its own.
    Processes of rank > 0 of a distributed run share rank 0's directory and take no lock.

    Args:
        resume_key: Config key of the checkpoint a run continues (``last``: the directory's own), or None.
    """

    def __init__(self, resume_key: str | None = None) -> None:
        self.resume_key = resume_key
        self._held: IO[str] | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._acquire(Path(str(config.hydra.run.dir)), config)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._release()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # each job of a sweep in its own directory
            self._acquire(Path(HydraConfig.get().runtime.output_dir), config)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            self._release()

    def _acquire(self, directory: Path, config: DictConfig) -> None:
        if secondary_rank() or self._held is not None:
            return
        try:
            self._held = lock_run_dir(directory)
        except RunDirInUse as err:
            _refuse(str(err))
        if self.resume_key is None:
            return
        found = _checkpoints(directory)
        resume = OmegaConf.select(config, self.resume_key)
        own = resume == "last" or (
            resume is not None and Path(str(resume)).resolve().is_relative_to(directory.resolve())
        )
        if found and not own:
            self._release()
            names = ", ".join(str(p.relative_to(directory)) for p in found[:3]) + (", ..." if len(found) > 3 else "")
            _refuse(
                f"the run directory {directory} already holds another run's checkpoints ({names}): continue that "
                f"run with {self.resume_key}=last, or give this run its own directory (hydra.run.dir=<dir>)"
            )

    def _release(self) -> None:
        if self._held is not None:
            self._held.close()  # closing the file releases the lock
            self._held = None


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
