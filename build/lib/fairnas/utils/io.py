"""Atomic file writes: a crash mid-write never leaves a truncated result, cache or checkpoint behind.

Every write goes to a temporary file in the destination's own folder (never ``$TMPDIR``, which
may be another filesystem, where a rename is impossible and a copy can be cut short), is flushed
and fsynced, renamed over the destination, and the folder is fsynced so the rename itself
survives a power loss. Until the rename the previous file is untouched, so an interruption, a
full disk or a read-only folder leaves the last complete version in place.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from fairnas.errors import StorageError

# Errors of the storage, not of the program: reported as one message naming the path.
STORAGE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def storage_error(err: OSError, path: str | Path, what: str = "file") -> StorageError | None:
    """The user-facing error for ``err`` if the storage caused it (else None: a bug, re-raise it)."""
    reason = STORAGE_ERRNOS.get(err.errno or 0)
    if reason is None:
        return None
    return StorageError(
        f"cannot write the {what} {path}: {reason} ({os.strerror(err.errno)}). The previous version of the file, if "
        "any, is intact. Free space or fix the permissions and run the same command again, or write elsewhere "
        "(hydra.run.dir=...)."
    )


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | Path) -> None:
    """Makes a rename or a new file in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename has happened either way
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any], what: str = "file") -> Path:
    """Writes ``path`` through ``write(f)`` on a temporary file beside it, then renames it into place.

    The file gets the permissions an ordinary ``open(path, "w")`` would give (0666 less the
    umask), not the owner-only 0600 of a temporary file, so results stay readable by a team.

    Raises:
        StorageError: The disk is full, the folder read-only or not writable (``path`` unchanged).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise (storage_error(err, path, what) or err) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and (user := storage_error(err, path, what)) is not None:
            raise user from None
        raise
    fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda f: f.write(str.encode(text)))


def finite_json(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by None (JSON has no NaN: null is what it means)."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite_json(v) for v in data]
    return data


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Writes strict JSON (NaN/inf become null, so every JSON reader can parse it) atomically."""
    return write_text_atomic(path, json.dumps(finite_json(data), indent=2, sort_keys=True, allow_nan=False) + "\n")
