"""Running the many train.py / search.py jobs of a study: in parallel, skipping finished ones.

Each job is an ordinary ``python train.py ...`` (or ``search.py``) run with a fixed
``hydra.run.dir``, so every result is a normal run directory a user can inspect or rerun by hand,
and each job's command line is appended to ``commands.sh`` in the study directory, once (a rerun
logs only jobs not listed yet, without the ``ckpt_path`` of a resume). A job whose
``results.json`` exists is finished and skipped; one that stopped half-way with a
``checkpoints/last.ckpt`` is resumed from it (``ckpt_path=``), so a study can be run in pieces.

A job's recipe (script and overrides) is fingerprinted in ``<run_dir>/job.json`` when it starts,
as the search cache fingerprints its settings: a rerun whose job in the same directory has
another recipe is refused before anything runs, instead of reusing (or resuming) a run made with
the old one.
"""

from __future__ import annotations

import hashlib
import json
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

from fairnas.errors import ConfigError
from fairnas.utils import write_json_atomic

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

    @property
    def recipe(self) -> dict[str, object]:
        """What the run's results depend on: the script and its overrides, and their fingerprint."""
        recipe: dict[str, object] = {"script": self.script, "overrides": list(self.overrides)}
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
        return {"fingerprint": digest, **recipe}

    @property
    def recipe_file(self) -> Path:
        return self.run_dir / "job.json"

    def recipe_change(self) -> str | None:
        """How the recipe recorded in ``run_dir`` differs from this job's, or None (same, or none recorded)."""
        if not self.recipe_file.is_file():
            return None
        try:
            saved = json.loads(self.recipe_file.read_text())
            old_script, old = str(saved["script"]), [str(o) for o in saved["overrides"]]
        except (ValueError, KeyError, TypeError) as err:
            return f"{self.recipe_file} is unreadable ({type(err).__name__}: {err})"
        new = list(self.overrides)
        if (old_script, old) == (self.script, new):
            return None
        removed = [o for o in old if o not in new]
        added = [o for o in new if o not in old]
        what = f"script {old_script} -> {self.script}; " if old_script != self.script else ""
        return f"{self.run_dir}: {what}removed {removed}, added {added}" + ("" if removed or added else " (reordered)")

    def argv(
        self, python: str, root: Path, *, resume: bool = True, launcher: str | None = None,
        launcher_overrides: Sequence[str] = (),
    ) -> list[str]:  # fmt: skip
        """The command line; with ``resume``, continuing from ``last.ckpt`` when the job is resumable and has one.

        With a Hydra ``launcher`` (a ``hydra/launcher`` config name, e.g. ``slurm``), the job is a
        one-job multirun (``-m``) of that launcher whose only job runs in ``run_dir``: the launcher
        (e.g. SLURM through submitit) runs it, and the command returns when it has finished.
        """
        overrides = list(self.overrides)
        last = self.run_dir / "checkpoints" / "last.ckpt"
        if resume and self.resumable and last.is_file():
            overrides.append(f"ckpt_path={last}")
        script = root / self.script
        # From a checkout: the top-level script; from an installed package: its module (fairnas-train's).
        program = [str(script)] if script.is_file() else ["-m", f"fairnas.cli.{Path(self.script).stem}"]
        if launcher is None:
            return [python, *program, *overrides, f"hydra.run.dir={self.run_dir}"]
        where = [f"hydra.sweep.dir={self.run_dir}", "hydra.sweep.subdir=."]
        return [python, *program, "--multirun", f"hydra/launcher={launcher}", *launcher_overrides, *overrides, *where]


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
    launcher: str | None = None,
    launcher_overrides: Sequence[str] = (),
) -> dict[str, int]:
    """Runs the unfinished ``jobs``, ``parallel`` at a time, each with ``threads_per_job`` CPU threads.

    By default each job is a local process. With ``launcher`` (a ``hydra/launcher`` config name,
    e.g. ``slurm``; ``launcher_overrides`` such as ``hydra.launcher.partition=gpu``), each job is
    handed to that Hydra launcher instead (:meth:`Job.argv`), and ``parallel`` is how many jobs
    are submitted at a time.

    Every job's stdout and stderr go to ``<run_dir>/console.log``. A failing job does not stop the
    others; after all have run, :class:`JobFailed` names the failures.

    Returns:
        Counts: ``skipped`` (already finished), ``ran``.

    Raises:
        ConfigError: ``parallel`` or ``threads_per_job`` is not positive, or a job's run directory
            holds a run of another recipe (``job.json``); nothing runs then.
        JobFailed: One or more jobs exited with a non-zero status.
    """
    if parallel < 1 or (threads_per_job is not None and threads_per_job < 1):
        raise ConfigError(f"jobs and threads_per_job must be >= 1, got {parallel} and {threads_per_job}")
    root = Path(root).resolve()
    python = python or sys.executable
    changed = [change for job in jobs if (change := job.recipe_change())]
    if changed:
        shown = "\n  ".join(changed[:5]) + (f"\n  ... and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise ConfigError(
            f"{len(changed)} run(s) of this study were made with other settings than now:\n  {shown}\n"
            "A finished (or interrupted) run is reused only for the same recipe. Restore the settings it was "
            "made with, give the changed study its own directory (study.out_dir=...), or move those run "
            "directories aside to run them again"
        )
    unrecorded = [job for job in jobs if job.done and not job.recipe_file.is_file()]
    if unrecorded:
        log.warning(
            "%d finished runs predate recipe fingerprints (no job.json, e.g. %s): reused without a check",
            len(unrecorded), unrecorded[0].run_dir,
        )  # fmt: skip
    todo = [job for job in jobs if not job.done]
    launch = {"launcher": launcher, "launcher_overrides": tuple(str(o) for o in launcher_overrides)}
    env = dict(os.environ)
    if threads_per_job is not None:
        env.update(OMP_NUM_THREADS=str(threads_per_job), MKL_NUM_THREADS=str(threads_per_job))
    if commands_file is not None and todo:
        _log_commands(Path(commands_file), [_quote(job.argv(python, root, resume=False, **launch)) for job in todo])
    failures: list[str] = []

    def run(index_job: tuple[int, Job]) -> None:
        index, job = index_job
        job.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(job.recipe_file, job.recipe)
        argv = job.argv(python, root, **launch)
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
