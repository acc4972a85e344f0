"""An architecture: one choice index per searchable layer, written '-'-joined (``4-0-4-1``).

A leaf module (no torch, no numpy) so samplers, search spaces and torch-free strategies share one
definition.
"""

from __future__ import annotations

from collections.abc import Sequence

Arch = tuple[int, ...]


def format_arch(arch: Sequence[int]) -> str:
    """The canonical string form of an architecture, e.g. ``'4-0-4-1'``."""
    return "-".join(str(int(c)) for c in arch)
