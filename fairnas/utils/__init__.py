"""Small shared helpers."""

from fairnas.utils.io import write_json_atomic, write_text_atomic

__all__ = ["write_json_atomic", "write_text_atomic"]
