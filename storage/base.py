"""The connection plumbing shared by the `Store` parts: serialized write transactions, reads, errors."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite

from .db import storage_error
from .errors import NotFoundError, StorageError
from .migrations import rollback_quietly


class StoreBase:
    """Owns the one long-lived connection; every write goes through `_write()` under one lock."""

    def __init__(self, conn: aiosqlite.Connection, path: str, busy_timeout: float) -> None:
        self._conn: aiosqlite.Connection | None = conn
        self._path = path
        self._busy_timeout = busy_timeout
        self._lock = asyncio.Lock()

    @property
    def path(self) -> str:
        """The database file (or ":memory:")."""
        return self._path

    def _error(self, exc: BaseException) -> StorageError:
        if isinstance(exc, sqlite3.IntegrityError) and "FOREIGN KEY" in str(exc):
            return NotFoundError(f"{self._path}: a referenced chat, message or job does not exist", self._path)
        return storage_error(self._path, exc, self._busy_timeout)

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StorageError(f"{self._path}: the store is closed", self._path)
        return self._conn

    async def _fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """Run a query and return all rows; raises StorageError."""
        conn = self._connection()
        try:
            return list(await conn.execute_fetchall(sql, tuple(params)))
        except (sqlite3.Error, ValueError) as exc:
            raise self._error(exc) from exc

    async def _fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    async def _run(self, sql: str, params: Iterable[Any] = ()) -> tuple[int, int | None]:
        """Execute one statement (inside `_write()`); returns (rowcount, lastrowid). Raises StorageError."""
        conn = self._connection()
        try:
            cursor = await conn.execute(sql, tuple(params))
            result = cursor.rowcount, cursor.lastrowid
            await cursor.close()
            return result
        except (sqlite3.Error, ValueError) as exc:
            raise self._error(exc) from exc

    async def _run_many(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        conn = self._connection()
        try:
            cursor = await conn.executemany(sql, rows)
            await cursor.close()
        except (sqlite3.Error, ValueError) as exc:
            raise self._error(exc) from exc

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[None]:
        """One write transaction (`BEGIN IMMEDIATE` ... `COMMIT`), serialized with every other write.

        Rolled back if the body raises or is cancelled; committed (durably) when it returns.
        """
        async with self._lock:
            # aiosqlite runs queued statements in order even when the awaiting task is cancelled,
            # so after any failure or cancellation a ROLLBACK is queued behind whatever did run:
            # the connection is never left inside a transaction.
            try:
                await self._run("BEGIN IMMEDIATE")
                yield
            except BaseException:
                await self._rollback()
                raise
            try:
                await self._run("COMMIT")
            except BaseException:
                await self._rollback()
                raise

    async def _rollback(self) -> None:
        if self._conn is not None:
            await rollback_quietly(self._conn)
