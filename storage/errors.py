"""Errors raised by the storage layer (no database imports, cheap to import)."""

from __future__ import annotations


class StorageError(Exception):
    """The history database cannot be used: its message names the file and what is wrong.

    Raised for a corrupt, foreign, newer-schema, locked, unreadable or unwritable database file,
    and for any SQLite failure during an operation (disk full, I/O error, a closed store).
    `path` is the database file (or ":memory:").
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class NotFoundError(StorageError, LookupError):
    """A chat, message, job or job item with the given id does not exist."""
