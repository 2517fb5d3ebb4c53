"""Opening the SQLite file: checks before SQLite touches it, pragmas, error translation.

Nothing here ever writes to a file that is not already a valid SQLite database (or empty/new):
a file with a foreign header is rejected by reading its first 16 bytes, before SQLite opens it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import aiosqlite

from .errors import StorageError

MEMORY = ":memory:"
SQLITE_MAGIC = b"SQLite format 3\x00"


def default_db_path() -> Path:
    """`<platformdirs user data dir for "baton">/baton.db` (`Store.open()` creates the folder; an explicit
    path's folder must already exist)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("baton")) / "baton.db"


def describe(exc: BaseException, busy_timeout: float, opening: bool = False) -> str:
    """A short human explanation of an SQLite error (the caller prefixes the file name).

    `opening`: the error happened while opening, when Baton has not modified the file.
    """
    untouched = ("; Baton did not modify it: move it away (or pass another --db path) to start a new history"
                 if opening else "")
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    if primary in (5, 6) or "locked" in text or "busy" in text:
        return (f"the database is locked by another process (still busy after {busy_timeout:g} s); "
                "close the other program using it and try again")
    if primary == 26 or "not a database" in text:
        return f"the file is not an SQLite database (it may be corrupt or encrypted){untouched}"
    if primary == 11 or "malformed" in text:
        return f"the database file is corrupt ({text}){untouched}"
    if primary == 8 or "readonly" in text:
        return f"the database cannot be written ({text}); check the permissions of the file and its folder"
    if primary == 14 or "unable to open" in text:
        return f"cannot open the database file ({text}); check that its folder exists and is writable"
    if primary == 13 or "disk is full" in text:
        return f"the disk is full ({text})"
    if primary == 10:
        return f"disk I/O error ({text})"
    return f"SQLite error: {text}"


def storage_error(label: str, exc: BaseException, busy_timeout: float, opening: bool = False) -> StorageError:
    """Wrap an SQLite (or closed-connection) error into a `StorageError` naming the file."""
    if isinstance(exc, ValueError) and "closed" in str(exc).lower():
        return StorageError(f"{label}: the store is closed", label)
    return StorageError(f"{label}: {describe(exc, busy_timeout, opening)}", label)


def precheck(path: Path, create_folder: bool = False) -> None:
    """Reject paths SQLite must not open, without modifying anything (but the folder, if asked).

    `create_folder`: create a missing folder (for the default path); otherwise a missing folder is an
    error, so that a mistyped `--db` never starts a new, empty history somewhere.
    Raises StorageError when the path is a directory or not a regular file, cannot be read or
    written, does not start with the SQLite header, or its folder does not exist (or cannot be
    created) or cannot be written. An empty or missing file is fine (a new database is created there).
    """
    if path.is_dir():
        raise StorageError(f"{path}: is a directory, not a database file", str(path))
    if not path.exists():
        _check_folder(path, create_folder)
        return
    if not path.is_file():
        raise StorageError(f"{path}: is not a regular file", str(path))
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise StorageError(f"{path}: cannot read the database file ({exc.strerror or exc})", str(path)) from exc
    if head and head != SQLITE_MAGIC:
        raise StorageError(f"{path}: is not an SQLite database (unexpected file header: it is corrupt or "
                           "another kind of file); Baton did not modify it: move it away (or pass another "
                           "--db path) to start a new history", str(path))
    if not os.access(path, os.W_OK):
        raise StorageError(f"{path}: the database file is read-only (permission denied)", str(path))
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise StorageError(f"{path}: its folder {path.parent} is not writable (SQLite needs to create "
                           "the -wal and -shm files next to the database)", str(path))


def _check_folder(path: Path, create: bool) -> None:
    """The folder of a database file that does not exist yet: created if `create`, else it must exist."""
    folder = path.parent
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{path}: cannot create its folder {folder} ({exc.strerror or exc})",
                               str(path)) from exc
    elif not folder.exists():
        raise StorageError(f"{path}: the folder {folder} does not exist (check the path, or create the "
                           "folder first); no database was created", str(path))
    elif not folder.is_dir():
        raise StorageError(f"{path}: {folder} is not a folder", str(path))


async def connect(path: Path | str, busy_timeout: float, create_folder: bool = False) -> aiosqlite.Connection:
    """Open an autocommit connection with a busy timeout and probe that the file is readable.

    `create_folder`: create the file's folder when it is missing (else that is an error, see `precheck`).
    Explicit transactions (`BEGIN IMMEDIATE` ... `COMMIT`) are the caller's job.
    Raises StorageError (naming the file) for every problem; nothing is written here.
    """
    label = str(path)
    if label != MEMORY:
        try:
            precheck(Path(path), create_folder)
        except OSError as exc:  # e.g. no permission to look into a parent folder
            raise StorageError(f"{label}: cannot access the database file ({exc.strerror or exc})",
                               label) from exc
    try:
        conn = await aiosqlite.connect(label, timeout=busy_timeout, isolation_level=None)
    except (sqlite3.Error, OSError) as exc:
        raise storage_error(label, exc, busy_timeout, opening=True) from exc
    try:
        conn.row_factory = sqlite3.Row
        await conn.execute(f"PRAGMA busy_timeout = {max(0, int(busy_timeout * 1000))}")
        # Reading the schema makes SQLite read and validate the header and page 1.
        await conn.execute_fetchall("SELECT count(*) FROM sqlite_master")
    except (sqlite3.Error, ValueError) as exc:
        await conn.close()
        raise storage_error(label, exc, busy_timeout, opening=True) from exc
    return conn


async def configure(conn: aiosqlite.Connection) -> str:
    """Per-connection pragmas: WAL journal, foreign keys, full fsync on commit. Returns the journal mode.

    Raises sqlite3.Error (the caller translates it).
    """
    await conn.execute("PRAGMA foreign_keys = ON")
    rows = await conn.execute_fetchall("PRAGMA journal_mode = WAL")
    # FULL: a committed message survives power loss too, not only a crash of the app.
    await conn.execute("PRAGMA synchronous = FULL")
    return str(rows[0][0]).lower()
