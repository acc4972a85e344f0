"""Reading a W&B offline run (``wandb/offline-run-*/run-<id>.wandb``) back without a server.

The file is W&B's transaction log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then
LevelDB-log framing (32 KiB blocks; records of checksum, length, type, data; a record too long
for its block is split into FIRST/MIDDLE/LAST pieces), each record a ``wandb_internal_pb2.Record``.
W&B 0.31 writes it from its Go core and no longer ships a Python reader, so this one checks what a
run really holds (config, name, group, tags, history, summary) the way ``wandb sync`` would see it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HEADER = struct.Struct("<4sHB")
_RECORD = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    ident, magic, version = _HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path} is not a W&B transaction log (header {data[:7]!r})")
    out, pending, pos = [], b"", _HEADER.size
    while pos + _RECORD.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _RECORD.size:  # block trailer: padding
            pos += left
            continue
        _checksum, length, kind = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += left - _RECORD.size
            continue
        chunk, pos = data[pos : pos + length], pos + length
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            out.append(pending + chunk)
            pending = b""
        else:
            raise ValueError(f"{path}: unknown record type {kind} at byte {pos - length}")
    return out


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass
class OfflineRun:
    """What an offline W&B run holds."""

    id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Reads ``run_dir`` (an ``offline-run-*`` folder, or its ``.wandb`` file)."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(run_dir)
    files = [path] if path.is_file() else sorted(path.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {path}")
    run = OfflineRun()
    for raw in _records(files[0]):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.id, run.name, run.group, run.job_type = r.run_id, r.display_name, r.run_group, r.job_type
            run.tags = list(r.tags)
            run.config.update({_key(i): _value(i.value_json) for i in r.config.update})
        elif kind == "config":
            run.config.update({_key(i): _value(i.value_json) for i in record.config.update})
            for item in record.config.remove:
                run.config.pop(_key(item), None)
        elif kind == "history":
            run.history.append({_key(i): _value(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run.summary.update({_key(i): _value(i.value_json) for i in record.summary.update})
        elif kind == "artifact":
            a = record.artifact
            run.artifacts.append({"name": a.name, "type": a.type, "files": [m.path for m in a.manifest.contents]})
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run
