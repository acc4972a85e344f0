"""A persistent, append-only cache of evaluation results, keyed by architecture string.

One JSON object per line: first a header with the fingerprint of what produced the results
(checkpoint, calibration and validation settings), then one record per architecture. Appending a
line and flushing it to disk is the only write, so a crash loses at most the line being written;
a torn last line is ignored (with a warning) when the cache is read back. No pickle, no eval: a
cache file can only ever yield plain numbers and strings.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from fairnas.errors import ConfigError
from fairnas.utils.io import storage_error

# Every record has its architecture and costs; accuracy and latency come when measured.
REQUIRED_FIELDS = ("madds", "params")
NUMBER_FIELDS = ("madds", "params", "acc1", "acc5", "loss", "latency_ms")


def record_problem(record: Any) -> str | None:
    """What is wrong with a cache record read back from disk, or None if it is sound."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    if not isinstance(record.get("arch"), str):
        return f"field 'arch' must be an architecture string, got {record.get('arch')!r}"
    for field in NUMBER_FIELDS:
        if field not in record:
            if field in REQUIRED_FIELDS:
                return f"field {field!r} is missing"
            continue
        value = record[field]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"field {field!r} must be a number, got {value!r}"
    return None


class ResultCache:
    """Results by architecture string, persisted to ``path`` (in memory only if None).

    Args:
        path: The ``.jsonl`` file; created if missing, resumed if present.
        fingerprint: What the results depend on; a file written under another fingerprint is
            refused rather than silently mixed in.
    """

    def __init__(self, path: str | Path | None, fingerprint: dict[str, Any] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.fingerprint = fingerprint or {}
        self._records: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.exists() and self.path.stat().st_size > 0:
            self._load()
        elif self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append({"fingerprint": self.fingerprint})

    def _load(self) -> None:
        assert self.path is not None
        text = self.path.read_text()
        if not text.endswith("\n"):  # a crash between a record and its newline, or inside the record
            last = text[text.rfind("\n") + 1 :]
            try:
                json.loads(last)
            except json.JSONDecodeError:
                pass  # torn: dropped below
            else:
                with open(self.path, "a") as f:
                    f.write("\n")  # complete: keep it, so the next append starts a line of its own
                text += "\n"
        lines = text.splitlines()
        try:
            header = json.loads(lines[0])["fingerprint"]
        except (json.JSONDecodeError, KeyError, TypeError, IndexError):
            raise ConfigError(
                f"{self.path} is not an evaluation cache of fairnas: move it away or choose another run directory"
            ) from None
        if header != self.fingerprint:
            differ = sorted(k for k in set(header) | set(self.fingerprint) if header.get(k) != self.fingerprint.get(k))
            raise ConfigError(
                f"the evaluation cache {self.path} was written with other settings ({', '.join(differ)} differ): "
                "its results do not apply. Use another run directory (hydra.run.dir=...) or delete the file."
            )
        for number, line in enumerate(lines[1:], start=2):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # the write a crash interrupted
                    warnings.warn(f"{self.path}: ignoring a torn last line", stacklevel=2)
                    self._truncate_last_line()
                    continue
                raise ConfigError(f"{self.path}, line {number}: not a result record; the cache is corrupt") from None
            problem = record_problem(record)
            if problem is not None:  # whole JSON with a bad field: edited or foreign, not a torn write
                raise ConfigError(
                    f"{self.path}, line {number}: {problem}; the cache is corrupt. Delete the line (or the file, "
                    "to evaluate everything again) or use another run directory (hydra.run.dir=...)."
                )
            self._records[record["arch"]] = record

    def _truncate_last_line(self) -> None:
        assert self.path is not None
        data = self.path.read_bytes()
        keep = data[: data.rstrip(b"\n").rfind(b"\n") + 1]
        with open(self.path, "r+b") as f:
            f.truncate(len(keep))

    def _append(self, obj: dict[str, Any]) -> None:
        assert self.path is not None
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(obj, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:  # a line cut short by a full disk is dropped as torn on the next run
            raise (storage_error(err, self.path, "evaluation cache") or err) from None

    @classmethod
    def holding(cls, records: list[dict[str, Any]]) -> ResultCache:
        """An in-memory cache holding ``records`` (those another process read from the file it writes)."""
        cache = cls(None)
        cache._records = {r["arch"]: dict(r) for r in records}
        return cache

    def get(self, key: str) -> dict[str, Any] | None:
        record = self._records.get(key)
        return dict(record) if record is not None else None

    def put(self, key: str, record: dict[str, Any]) -> None:
        record = {**record, "arch": key}
        self._records[key] = record
        if self.path is not None:
            self._append(record)

    def records(self) -> list[dict[str, Any]]:
        """Every record, in the order first evaluated."""
        return [dict(r) for r in self._records.values()]

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: str) -> bool:
        return key in self._records
