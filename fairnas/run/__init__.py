"""A run: its record (``record``), its checkpoints (``checkpoint``: reading, atomic writing, the
interrupt save) and how it continues (``resume``)."""

from fairnas.run.checkpoint import AtomicCheckpointIO, SaveOnInterrupt, load_checkpoint, load_supernet, read_record
from fairnas.run.record import RunRecord

__all__ = ["AtomicCheckpointIO", "RunRecord", "SaveOnInterrupt", "load_checkpoint", "load_supernet", "read_record"]
