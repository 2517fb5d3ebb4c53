"""The uploaded-files part of `Store`: whole files kept in the database (the OpenAI Files API's batch input
files, which `baton serve` turns into batch jobs), so a file outlives the server process that received it."""

from __future__ import annotations

from datetime import datetime

from .base import StoreBase
from .errors import NotFoundError
from .records import StoredFile
from .rows import now

_FILE_SELECT = "SELECT id, purpose, filename, bytes, created_at FROM file"


def _file_from_row(row) -> StoredFile:
    return StoredFile(id=row["id"], purpose=row["purpose"], filename=row["filename"], bytes=row["bytes"],
                      created_at=datetime.fromisoformat(row["created_at"]))


class FilesMixin(StoreBase):
    """Files: written once, read back whole; ids are never reused (AUTOINCREMENT)."""

    async def create_file(self, purpose: str, filename: str, content: bytes) -> StoredFile:
        """Store a file; committed before returning.

        Args:
            purpose: what it is for (e.g. `batch`).
            filename: the name it was uploaded under.
            content: its bytes.
        Raises:
            TypeError: content is not bytes. StorageError.
        """
        if not isinstance(content, (bytes, bytearray, memoryview)):
            raise TypeError(f"content: must be bytes, not {type(content).__name__}")
        stamp = now()
        async with self._write():
            _, file_id = await self._run(
                "INSERT INTO file (purpose, filename, bytes, content, created_at) VALUES (?, ?, ?, ?, ?)",
                (purpose, filename, len(content), bytes(content), stamp))
        return StoredFile(file_id, purpose, filename, len(content), datetime.fromisoformat(stamp))

    async def get_file(self, file_id: int) -> StoredFile | None:
        """The file's description, or None. Raises StorageError."""
        row = await self._fetchone(_FILE_SELECT + " WHERE id = ?", (file_id,))
        return None if row is None else _file_from_row(row)

    async def list_files(self, purpose: str | None = None) -> list[StoredFile]:
        """All files (of one purpose when given), newest first. Raises StorageError."""
        if purpose is None:
            rows = await self._fetchall(_FILE_SELECT + " ORDER BY id DESC")
        else:
            rows = await self._fetchall(_FILE_SELECT + " WHERE purpose = ? ORDER BY id DESC", (purpose,))
        return [_file_from_row(r) for r in rows]

    async def file_content(self, file_id: int) -> bytes:
        """The file's bytes. Raises NotFoundError (no such file), StorageError."""
        row = await self._fetchone("SELECT content FROM file WHERE id = ?", (file_id,))
        if row is None:
            raise NotFoundError(f"{self._path}: file {file_id} does not exist", self._path)
        return bytes(row["content"])
