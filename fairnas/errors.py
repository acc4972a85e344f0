"""The errors a user can cause with bad input: reported as one clear message, not a stack trace."""

import logging
import sys

from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf.errors import MissingMandatoryValue

from fairnas.config_error import ConfigError
from fairnas.data.errors import DataError
from fairnas.models.space import ArchitectureError, SearchSpaceError
from fairnas.search.checkpoint import CheckpointError
from fairnas.system.systems import NonFiniteLossError
from fairnas.utils.io import StorageError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ArchitectureError,
    SearchSpaceError,
    DataError,
    FileNotFoundError,
    ConfigError,
    CheckpointError,
    MissingMandatoryValue,
    NonFiniteLossError,
    StorageError,  # a full disk or a read-only folder while writing a checkpoint, result or cache
    MisconfigurationException,  # Lightning's word for impossible Trainer settings (e.g. more devices than exist)
)


def user_error(err: BaseException) -> BaseException | None:
    """The user-caused error behind ``err`` (looking through Hydra's InstantiationException), else None."""
    while err is not None:
        if isinstance(err, USER_ERRORS):
            return err
        err = err.__cause__
    return None


def exit_on_user_error(err: BaseException, log: logging.Logger) -> None:
    """Ends the program with one clear message (stderr and the run's log) and exit code 2 when
    ``err`` comes from bad input; re-raises anything else, a bug, with its full traceback."""
    cause = user_error(err)
    if cause is None:
        raise err
    message = f"{type(cause).__name__}: {_without_worker_traceback(str(cause))}"
    log.error(message)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _without_worker_traceback(message: str) -> str:
    """The original message of an error a DataLoader worker raised: PyTorch re-raises it in the main
    process with the worker's whole traceback in the message ("Caught X in DataLoader worker process 0.
    Original Traceback ..."), whose last line is ``module.X: <the message>``."""
    if "\nOriginal Traceback" not in message:
        return message
    last = message.rstrip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last
