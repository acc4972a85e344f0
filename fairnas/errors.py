"""Errors a user can cause with bad input, and how the programs report them.

Every error caused by bad input (a setting, a file, a checkpoint, the storage) derives from
:class:`FairnasError`; its message says what is wrong and what to do. The programs (``fairnas.cli``)
catch those, and the few third-party errors that mean the same (:data:`THIRD_PARTY_USER_ERRORS`),
print the message and exit with code 2. Anything else is a bug and keeps its traceback.

This module imports nothing but the standard library, so any module can raise these errors and
printing one never loads Lightning. A new kind of user error is a new subclass: nothing else to edit.
"""

from __future__ import annotations

import logging
import sys

__all__ = [
    "ArchitectureError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "ExportError",
    "FairnasError",
    "IDXError",
    "NonFiniteLossError",
    "RunDirInUse",
    "RunRecordError",
    "SearchSpaceError",
    "StorageError",
    "UnknownDatasetError",
    "exit_on_user_error",
    "user_error",
]


class FairnasError(Exception):
    """Bad input a user can fix: the message says which input, what is wrong and what to do."""


class ConfigError(FairnasError, ValueError):
    """A setting (in a config or on the command line) is invalid."""


class RunDirInUse(ConfigError):
    """Another live run holds the run directory."""


class StorageError(FairnasError, RuntimeError):
    """A file could not be written because of the storage (full, read-only, no permission)."""


class CheckpointError(FairnasError, ValueError):
    """A checkpoint is missing, unreadable, or not a fairnas supernet checkpoint."""


class RunRecordError(FairnasError, ValueError):
    """A run record (read from a checkpoint) is not valid data of the schema."""


class SearchSpaceError(FairnasError, ValueError):
    """A search-space description is malformed."""


class ArchitectureError(FairnasError, ValueError):
    """An architecture does not belong to its search space."""


class DataError(FairnasError, RuntimeError):
    """A dataset could not be loaded or is not usable as configured."""


class DataNotFoundError(DataError, FileNotFoundError):
    """Dataset files are missing; the message says where we looked and how to get them."""


class UnknownDatasetError(DataError):
    """A dataset name that is neither one of fairnas's datamodules nor allowed on the command line."""


class IDXError(DataError, ValueError):
    """An IDX file is malformed, truncated or has an unexpected shape."""


class ExportError(FairnasError, RuntimeError):
    """A network could not be exported, or its export does not compute what the PyTorch network does."""


class NonFiniteLossError(FairnasError, RuntimeError):
    """A loss or gradient became NaN or infinite and the policy is to stop."""


class LostProcessError(FairnasError, RuntimeError):
    """Another process of a distributed run ended (killed, out of memory, its node lost) while this one waited."""


THIRD_PARTY_USER_ERRORS = (
    ("builtins", "FileNotFoundError"),  # a path the user gave does not exist
    ("omegaconf.errors", "MissingMandatoryValue"),  # a ??? setting left unset
    # Lightning's word for impossible Trainer settings (e.g. more devices than exist)
    ("lightning_fabric.utilities.exceptions", "MisconfigurationException"),
)
"""(module, class) of the errors from dependencies that mean bad input. Looked up in ``sys.modules``
only: an error of a module that was never imported cannot have been raised."""


def _third_party() -> tuple[type[BaseException], ...]:
    found = (getattr(sys.modules.get(module), name, None) for module, name in THIRD_PARTY_USER_ERRORS)
    return tuple(cls for cls in found if isinstance(cls, type))


def user_error(err: BaseException | None) -> BaseException | None:
    """The user-caused error behind ``err`` (looking through Hydra's InstantiationException), else None."""
    kinds = (FairnasError, *_third_party())
    while err is not None:
        if isinstance(err, kinds):
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
