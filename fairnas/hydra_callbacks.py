"""Hydra callbacks of the entry points."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


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
