"""Exceptions raised by the data package."""

from __future__ import annotations


class DataError(RuntimeError):
    """A dataset could not be loaded or is not usable as configured."""


class DataNotFoundError(DataError, FileNotFoundError):
    """Dataset files are missing; the message says where we looked and how to get them."""
