"""Published NAS benchmarks shipped with the project (ground truth from outside it)."""

from fairnas.nas_bench.macro import (
    MACRO_FILE,
    MACRO_STAGES,
    MacroEntry,
    arch_to_key,
    canonical_key,
    distinct_keys,
    key_to_arch,
    load_macro,
)

__all__ = [
    "MACRO_FILE",
    "MACRO_STAGES",
    "MacroEntry",
    "arch_to_key",
    "canonical_key",
    "distinct_keys",
    "key_to_arch",
    "load_macro",
]
