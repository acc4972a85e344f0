"""Running the many train.py / search.py jobs of a study: in parallel, skipping finished ones.

Each job is an ordinary ``python train.py ...`` (or ``search.py``) run with a fixed
``hydra.run.dir``, so every result is a normal run directory a user can inspect or rerun by hand,
and each job's command line is appended to ``commands.sh`` in the study directory, once (a rerun
logs only jobs not listed yet, without the ``ckpt_path`` of a resume). A job whose
``results.json`` exists is finished and skipped; one that stopped half-way with a
``checkpoints/last.ckpt`` is resumed from it (``ckpt_path=``), so a study can be run in pieces.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fairnas.config_error import ConfigError

log = logging.getLogger("fairnas")

__all__ = ["Job", "JobFailed", "run_jobs"]


class JobFailed(RuntimeError):
    """Some jobs of a stage exited with an error; their console logs say why."""


@dataclass(frozen=True)
class Job:
    """One ``python <script> <overrides> hydra.run.dir=<run_dir>`` run.

    Attributes:
        script: ``train.py`` or ``search.py`` (resolved against ``root``).
        run_dir: The run directory; ``results.json`` there marks the job finished.
        overrides: Hydra overrides, without ``hydra.run.dir``.
        resumable: Resume from ``run_dir/checkpoints/last.ckpt`` when it exists (training jobs).
    """

    script: str
    run_dir: Path
    overrides: tuple[str, ...] = field(default_factory=tuple)
    resumable: bool = False

    @property
    def done(self) -> bool:
        return (self.run_dir / "results.json").is_file()

    def argv(self, python: str, root: Path, *, resume: bool = True) -> list[str]:
        """The command line; with ``resume``, continuing from ``last.ckpt`` when the job is resumable and has one."""
        overrides = list(self.overrides)
        last = self.run_dir / "checkpoints" / "last.ckpt"
        if resume and self.resumable and last.is_file():
            overrides.append(f"ckpt_path={last}")
        return [python, str(root / self.script), *overrides, f"hydra.run.dir={self.run_dir}"]


def _quote(argv: Sequence[str]) -> str:
    shown = [Path(argv[1]).name if i == 1 else a for i, a in enumerate(argv)]
    shown[0] = "python"
    return " ".join(shlex.quote(a) for a in shown)


def _log_commands(commands_file: Path, lines: Sequence[str]) -> None:
    """Appends the lines not already in ``commands_file``: a job is listed once, however often it restarts."""
    listed = set(commands_file.read_text().splitlines()) if commands_file.is_file() else set()
    new = [line for line in dict.fromkeys(lines) if line not in listed]
    if new:
        with open(commands_file, "a") as f:
            f.writelines(f"{line}\n" for line in new)


def run_jobs(
    jobs: Sequence[Job],
    *,
    parallel: int = 1,
    threads_per_job: int | None = None,
    python: str | None = None,
    root: str | Path = ".",
    commands_file: str | Path | None = None,
) -> dict[str, int]:
    """Runs the unfinished ``jobs``, ``parallel`` at a time, each with ``threads_per_job`` CPU threads.

    Every job's stdout and stderr go to ``<run_dir>/console.log``. A failing job does not stop the
    others; after all have run, :class:`JobFailed` names the failures.

    Returns:
        Counts: ``skipped`` (already finished), ``ran``.

    Raises:
        ConfigError: ``parallel`` or ``threads_per_job`` is not positive.
        JobFailed: One or more jobs exited with a non-zero status.
    """
    if parallel < 1 or (threads_per_job is not None and threads_per_job < 1):
        raise ConfigError(f"jobs and threads_per_job must be >= 1, got {parallel} and {threads_per_job}")
    root = Path(root).resolve()
    python = python or sys.executable
    todo = [job for job in jobs if not job.done]
    env = dict(os.environ)
    if threads_per_job is not None:
        env.update(OMP_NUM_THREADS=str(threads_per_job), MKL_NUM_THREADS=str(threads_per_job))
    if commands_file is not None and todo:
        _log_commands(Path(commands_file), [_quote(job.argv(python, root, resume=False)) for job in todo])
    failures: list[str] = []

    def run(index_job: tuple[int, Job]) -> None:
        index, job = index_job
        job.run_dir.mkdir(parents=True, exist_ok=True)
        argv = job.argv(python, root)
        start = time.time()
        log.info("[%d/%d] %s", index + 1, len(todo), _quote(argv))
        with open(job.run_dir / "console.log", "a") as console:
            code = subprocess.call(argv, cwd=root, env=env, stdout=console, stderr=subprocess.STDOUT)
        elapsed = time.time() - start
        if code != 0 or not job.done:
            failures.append(f"{job.run_dir} (exit code {code}; see its console.log)")
            log.error("[%d/%d] failed after %.0f s: %s", index + 1, len(todo), elapsed, job.run_dir)
        else:
            log.info("[%d/%d] done in %.0f s: %s", index + 1, len(todo), elapsed, job.run_dir)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(run, enumerate(todo)))
    if failures:
        raise JobFailed(f"{len(failures)} of {len(todo)} runs failed:\n  " + "\n  ".join(failures))
    return {"skipped": len(jobs) - len(todo), "ran": len(todo)}
