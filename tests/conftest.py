"""Shared fixtures: tiny search spaces and helpers to run the real entry points."""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
import weakref
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fairnas.models import SearchSpace

ROOT = Path(__file__).resolve().parents[1]

# One intra-op thread per process: make test runs files in parallel (pytest-xdist), and torch's
# OpenMP threads spin-wait badly when more of them than cores compete. Child processes inherit it.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


def load_space(name: str) -> SearchSpace:
    return instantiate(OmegaConf.load(ROOT / "conf" / "search_space" / f"{name}.yaml"))


def tiny_space(dropout: float = 0.0) -> SearchSpace:
    """3 searchable layers x 3 choices (one of them skip), on 8x8 inputs: fast enough for float64 checks."""
    return SearchSpace.create(
        name="tiny",
        input_size=8,
        in_channels=3,
        num_classes=4,
        stem={"out": 4, "kernel": 3, "stride": 1},
        choices=["ir_k3_e1", "ir_k3_e2", "skip"],
        stages=[
            {"out": 4, "layers": 2, "stride": 1},
            {"out": 8, "layers": 1, "stride": 2, "choices": ["ir_k3_e2"]},
            {"out": 8, "layers": 1, "stride": 1},
        ],
        head={"channels": 8, "dropout": dropout},
    )


@pytest.fixture
def tiny() -> SearchSpace:
    return tiny_space()


def run_entry(
    script: str,
    *overrides: str,
    cwd: Path = ROOT,
    timeout: int = 300,
    env: dict[str, str] | None = None,
    fresh: bool = False,
) -> subprocess.CompletedProcess:
    """Runs ``python <script> overrides...`` like a user would, returns the finished process.

    By default the process is a fork of this (pytest) process with the entry point's imports
    already done: a separate process with its own exit code, output, signals, working directory
    and environment, that runs the script as ``__main__`` with ``sys.argv`` set (see
    :class:`ForkedEntry`). That saves the 6-7 s a new interpreter spends importing torch,
    Lightning and Hydra, most of the time of a short run. ``fresh=True`` starts a new interpreter
    instead, for what only a new interpreter shows: imports, registrations, the packaging.
    """
    env = _entry_env(env)
    if not fresh and hasattr(os, "fork"):
        proc = ForkedEntry(ROOT / script, list(overrides), cwd=Path(cwd), env=env)
        out, err = proc.communicate(timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return subprocess.run(
        [sys.executable, str(ROOT / script), *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _entry_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a program a test runs: this one, the checkout importable, W&B offline."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", **(extra or {})}


# The warning filters a new interpreter starts with (CPython's defaults, in order).
_DEFAULT_FILTERS = [
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, ""),
    ("ignore", PendingDeprecationWarning, ""),
    ("ignore", ImportWarning, ""),
    ("ignore", ResourceWarning, ""),
]
_ENTRY_MODULES = ("fairnas.cli.train", "fairnas.cli.search", "fairnas.cli.study", "fairnas.cli.report", "wandb")


class ForkedEntry:
    """``python script args...`` in a fork of this process, like ``subprocess.Popen``: ``pid``,
    ``poll``, ``wait``, ``send_signal``, ``communicate``.

    The script runs as ``__main__`` from a clean state (environment and ``$TMPDIR``, working
    directory, argv, signal handlers, CPython's default warning filters printing to stderr,
    Lightning's own log handlers, only the built-in block kinds, the standard library's ``atexit``
    handlers but not pytest's), and the child
    exits with the code the interpreter would (``sys.exit``'s code, 1 for an uncaught exception,
    killed by SIGINT on an uncaught Ctrl+C). Output goes to temporary files (stderr into stdout
    with ``merge``), read back by :meth:`communicate`.
    """

    def __init__(
        self, script: Path, args: list[str], *, cwd: Path, env: dict[str, str], merge: bool = False,
        new_session: bool = False, foreground: bool = False,
    ) -> None:  # fmt: skip
        for name in _ENTRY_MODULES:  # imported once here, shared by every fork
            importlib.import_module(name)
        self.args = [str(script), *args]
        self.returncode: int | None = None
        # Closed by communicate(): they outlive this call, as a Popen's pipes do.
        self._out = tempfile.TemporaryFile()  # noqa: SIM115
        self._err = None if merge else tempfile.TemporaryFile()  # noqa: SIM115
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        _STARTED.append(self)
        if self.pid == 0:  # the child: never returns
            code = 1
            try:
                if new_session:
                    os.setsid()
                err = self._out if self._err is None else self._err
                code = _run_as_main(
                    script, args, cwd=cwd, env=env, out=self._out.fileno(), err=err.fileno(), foreground=foreground
                )
            finally:
                os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str | None]:
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.wait()
            raise
        outputs = []
        for f in (self._out, self._err):
            if f is not None:
                f.seek(0)
                outputs.append(f.read().decode(errors="replace"))
                f.close()
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)


_STARTED: list[ForkedEntry] = []


@pytest.fixture(autouse=True)
def _no_leftover_processes():
    """A test that fails before its process ends does not leave it running (a long training run)."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_entry(
    script: str, *overrides: str, merge: bool = False, new_session: bool = False, foreground: bool = False,
    env: dict[str, str] | None = None,
) -> ForkedEntry:  # fmt: skip
    """Starts ``python <script> overrides...`` (a fork, see :class:`ForkedEntry`) and returns at once.
    ``foreground``: as a terminal starts a command, with Ctrl+C handled even where this process ignores it.
    ``env``: variables added to the program's environment."""
    return ForkedEntry(
        ROOT / script, list(overrides), cwd=ROOT, env=_entry_env(env), merge=merge, new_session=new_session,
        foreground=foreground,
    )  # fmt: skip


def _forget_test_block_kinds() -> None:
    """Unregisters the block kinds that tests registered in this process (a new interpreter knows only the
    built-in ones), and forgets their modules so that a config naming one imports it again."""
    from fairnas.models import registry

    for kind, cls in list(registry._REGISTRY.items()):
        if not cls.__module__.startswith("fairnas."):
            del registry._REGISTRY[kind]
            sys.modules.pop(cls.__module__, None)


def _run_as_main(
    script: Path, args: list[str], *, cwd: Path, env: dict[str, str], out: int, err: int, foreground: bool
) -> int:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    # The child's standard streams for the rest of its life (it ends with os._exit).
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    # Exit handlers: not pytest's, and none of the finalizers of objects this process inherited (a
    # temporary directory of the parent's, say, must outlive the child); the standard library's
    # handlers again, for what the child creates.
    atexit._clear()
    atexit.register(logging.shutdown)
    for info in weakref.finalize._registry.values():  # type: ignore[attr-defined]
        info.atexit = False
    weakref.finalize._registered_with_atexit = False  # type: ignore[attr-defined]  # the next finalize registers
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:  # as multiprocessing's own children start (Process._bootstrap)
        mp_util._finalizer_registry.clear()
        mp_util._run_after_forkers()
        atexit.register(mp_util._exit_function)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = None  # read $TMPDIR again, from this environment
    # Ctrl+C as a new interpreter gets it: ignored where this process ignores it (a background job),
    # else Python's handler; a terminal's foreground job always gets Python's handler.
    if foreground or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # pytest records warnings (it replaced how they are shown): re-executing the module restores the
    # printing to stderr; then CPython's default filters, as in a new interpreter.
    formatwarning = warnings.formatwarning  # Lightning's, set when it was imported
    importlib.reload(warnings)
    warnings.formatwarning = formatwarning
    warnings.resetwarnings()
    for action, category, module in reversed(_DEFAULT_FILTERS):
        warnings.filterwarnings(action, category=category, module=module)
    _forget_test_block_kinds()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("lightning_fabric", "pytorch_lightning"):
        # Imported by a program before Hydra sets up logging, Lightning prints to stderr itself (its
        # __init__); imported under pytest, its handlers are pytest's or point at pytest's capture.
        lightning = logging.getLogger(name)
        for handler in list(lightning.handlers):
            lightning.removeHandler(handler)
        lightning.addHandler(logging.StreamHandler())
        lightning.propagate = False
    sys.argv = [str(script), *args]
    code: Any = 0
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        code = e.code
    except KeyboardInterrupt:
        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)  # as Python reports an uncaught Ctrl+C
    except BaseException:
        traceback.print_exc()
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  # as at interpreter exit: wait for non-daemon threads
    atexit._run_exitfuncs()
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def compose_train(output_dir: Path, *overrides: str):
    """The train.py config for ``overrides``, writing to ``output_dir``, for an in-process
    ``fairnas.cli.train.train(cfg)``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


class SigtermAt(pl.Callback):
    """Test callback: the process sends itself SIGTERM after training step ``step`` (as a scheduler would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class WaitForSigtermAt(pl.Callback):
    """Test callback: after training step ``step``, writes ``<run dir>/at_step_<step>`` and waits (at most
    ``timeout`` s) until the process has received a SIGTERM from outside, so that the signal lands in the
    middle of training however late the test sends it. Changes nothing trained."""

    def __init__(self, step: int, timeout: float = 60.0) -> None:
        self.step = step
        self.timeout = timeout

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step != self.step:
            return
        (Path(trainer.default_root_dir) / f"at_step_{self.step}").touch()
        deadline = time.monotonic() + self.timeout
        while not trainer._signal_connector.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.02)


class SigintAt(pl.Callback):
    """Test callback: Ctrl+C in the middle of training step ``step`` (its gradients computed, the
    optimizer not yet stepped): the process sends itself SIGINT, as the terminal would."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.sent = False

    def on_before_optimizer_step(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step - 1 and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


class Preempted(Exception):
    """Raised by :class:`PreemptedAt`."""


class PreemptedAt(pl.Callback):
    """Test callback: after training step ``step``, writes what Lightning's SLURM handler writes
    (``hpc_ckpt_1.ckpt`` in the run directory), then stops the run as a pre-emption would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(Path(trainer.default_root_dir) / "hpc_ckpt_1.ckpt")
            raise Preempted(f"pre-empted after step {self.step}")


# ----------------------------------------------------------------- comparing runs
# Tiny training runs: 4 steps per epoch, 2 epochs; augmentation and dropout on, so their random streams matter. 8x8
# images: exactness does not depend on the image size, and the runs take a third of the time.
COMMON = [
    "dataset=synthetic",
    "search_space.input_size=8",
    "dataset.num_train=256",
    "dataset.batch_size=64",
    "dataset.augment=crop_flip",
    "search_space.head.dropout=0.2",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "system.val_archs=2",
    "system.val_bn_batches=1",
    "logger=none",
]


def ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: Path, b: Path) -> None:
    """Two training checkpoints hold the same training state, bit for bit."""
    x, y = ckpt(a), ckpt(b)
    assert x["global_step"] == y["global_step"]
    assert x["state_dict"].keys() == y["state_dict"].keys()
    for key in x["state_dict"]:
        assert torch.equal(x["state_dict"][key], y["state_dict"][key]), key
    for ox, oy in zip(x["optimizer_states"], y["optimizer_states"], strict=True):
        for (px, sx), (py, sy) in zip(ox["state"].items(), oy["state"].items(), strict=True):
            assert px == py and torch.equal(sx["momentum_buffer"], sy["momentum_buffer"]), px
    assert x["lr_schedulers"] == y["lr_schedulers"]


def assert_same_training(a: Path, b: Path) -> None:
    """:func:`assert_same_state`, and the same block-usage counts."""
    assert_same_state(a, b)
    assert torch.equal(ckpt(a)["state_dict"]["block_usage"], ckpt(b)["state_dict"]["block_usage"])


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())
