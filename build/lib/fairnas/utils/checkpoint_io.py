"""Lightning checkpoint saving that is atomic on the run directory's own filesystem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.types import _PATH

from fairnas.utils.io import write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves each checkpoint to a temporary file beside it, fsyncs it, renames it over the old one.

    Lightning's own ``TorchCheckpointIO`` writes through fsspec, which stages the file in
    ``$TMPDIR`` and then *moves* it: when the run directory is on another filesystem the move
    becomes "truncate the destination, copy", so a kill during the copy left a 0-byte
    ``last.ckpt``, a full disk a truncated one, and a small ``$TMPDIR`` failed every save. Here
    ``last.ckpt`` is replaced in one rename once the new file is complete: at any moment it is
    either the previous checkpoint or the new one. A full disk or an unwritable folder raises
    :class:`fairnas.utils.io.StorageError` naming the path, with the previous checkpoint intact.
    Remote paths (``s3://...``) go to Lightning's implementation.

    Pass it to the Trainer as a plugin (``conf/trainer/default.yaml`` does).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        write_atomic(Path(path), lambda f: torch.save(checkpoint, f), what="checkpoint")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
