"""Small shared helpers."""

from fairnas.utils.io import StorageError, write_atomic, write_json_atomic, write_text_atomic

__all__ = ["StorageError", "write_atomic", "write_json_atomic", "write_text_atomic"]
