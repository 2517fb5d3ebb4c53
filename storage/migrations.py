"""Schema upgrades as numbered steps; the applied count lives in `PRAGMA user_version`.

Version N means steps 1..N have been applied. Each step runs in its own `BEGIN IMMEDIATE`
transaction together with the `user_version` bump, so a crash mid-upgrade leaves the previous
version intact. To change the schema, append a `Step` to `STEPS` (never edit a released step).

Steps run with foreign keys off and are checked with `PRAGMA foreign_key_check` before they commit:
the procedure SQLite documents for changing a table's definition (create the new table, copy, drop
the old one, rename; https://www.sqlite.org/lang_altertable.html#otheralter), which with foreign
keys on would cascade the drop of `chat` into every message.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiosqlite

from .errors import StorageError

#: `PRAGMA application_id` of a Baton database ("Batn"), set by step 1.
APPLICATION_ID = 0x4261746E


@dataclass(frozen=True)
class Step:
    """One schema upgrade: SQL statements run in order, then an optional Python data migration."""

    name: str
    statements: tuple[str, ...] = ()
    run: Callable[[aiosqlite.Connection], Awaitable[None]] | None = None


# Keep the external-content FTS5 index (`message_fts`) in step with `message`.
_FTS_TRIGGERS = (
    """CREATE TRIGGER message_fts_insert AFTER INSERT ON message BEGIN
        INSERT INTO message_fts (rowid, content) VALUES (new.id, new.content);
    END""",
    """CREATE TRIGGER message_fts_delete AFTER DELETE ON message BEGIN
        INSERT INTO message_fts (message_fts, rowid, content) VALUES ('delete', old.id, old.content);
    END""",
    """CREATE TRIGGER message_fts_update AFTER UPDATE OF content ON message
    WHEN old.content IS NOT new.content BEGIN
        INSERT INTO message_fts (message_fts, rowid, content) VALUES ('delete', old.id, old.content);
        INSERT INTO message_fts (rowid, content) VALUES (new.id, new.content);
    END""",
)

_INITIAL = (
    f"PRAGMA application_id = {APPLICATION_ID}",
    """CREATE TABLE chat (
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL,
        system_prompt TEXT,
        params TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(params)),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        archived INTEGER NOT NULL DEFAULT 0 CHECK (archived IN (0, 1))
    )""",
    "CREATE INDEX chat_by_update ON chat (archived, updated_at DESC, id DESC)",
    """CREATE TABLE message (
        id INTEGER PRIMARY KEY,
        chat_id INTEGER NOT NULL REFERENCES chat (id) ON DELETE CASCADE,
        parent_id INTEGER REFERENCES message (id) ON DELETE SET NULL,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
        content TEXT NOT NULL DEFAULT '',
        model TEXT,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        ttft_ms REAL,
        tokens_per_s REAL,
        finish_reason TEXT CHECK (finish_reason IN ('stop', 'length', 'cancelled', 'error', 'interrupted')),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX message_by_chat ON message (chat_id, id)",
    "CREATE INDEX message_by_parent ON message (parent_id)",
    "CREATE INDEX message_unfinished ON message (id) WHERE role = 'assistant' AND finish_reason IS NULL",
    # External-content FTS5 index over message.content, kept in sync by the triggers below.
    """CREATE VIRTUAL TABLE message_fts USING fts5 (
        content, content = 'message', content_rowid = 'id', tokenize = 'unicode61 remove_diacritics 2'
    )""",
    *_FTS_TRIGGERS,
    """CREATE TABLE job (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('batch', 'agent')),
        name TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'queued'
            CHECK (status IN ('queued', 'running', 'paused', 'done', 'failed', 'cancelled')),
        source_path TEXT,
        spec TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(spec)),
        total_items INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    """CREATE TABLE job_item (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL REFERENCES job (id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        custom_id TEXT,
        request TEXT NOT NULL CHECK (json_valid(request)),
        status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
        result TEXT CHECK (result IS NULL OR json_valid(result)),
        error TEXT,
        completed_at TEXT,
        UNIQUE (job_id, idx)
    )""",
    "CREATE INDEX job_item_by_status ON job_item (job_id, status, idx)",
)

def _rebuilt(table: str, create: str, columns: str, after: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Statements that give `table` a new definition `create` (for `<table>_new`), keeping its rows."""
    return (create, f"INSERT INTO {table}_new ({columns}) SELECT {columns} FROM {table}", f"DROP TABLE {table}",
            f"ALTER TABLE {table}_new RENAME TO {table}", *after)


_CHAT_COLUMNS = "id, title, system_prompt, params, created_at, updated_at, archived"
_MESSAGE_COLUMNS = ("id, chat_id, parent_id, role, content, model, prompt_tokens, completion_tokens, ttft_ms, "
                    "tokens_per_s, finish_reason, created_at, updated_at")
_JOB_COLUMNS = "id, kind, name, status, source_path, spec, total_items, created_at, updated_at, owner_pid"

# AUTOINCREMENT: a deleted chat's, message's or job's id is never given to a new row, so a reference held
# elsewhere (a stream finishing a deleted answer, an agent task's transcript chat, a job id in a script)
# can never land on another row (https://www.sqlite.org/autoinc.html).
_NO_ID_REUSE = (
    *_rebuilt("chat", """CREATE TABLE chat_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        title TEXT NOT NULL,
        system_prompt TEXT,
        params TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(params)),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        archived INTEGER NOT NULL DEFAULT 0 CHECK (archived IN (0, 1))
    )""", _CHAT_COLUMNS, ("CREATE INDEX chat_by_update ON chat (archived, updated_at DESC, id DESC)",)),
    *_rebuilt("message", """CREATE TABLE message_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        chat_id INTEGER NOT NULL REFERENCES chat (id) ON DELETE CASCADE,
        parent_id INTEGER REFERENCES message (id) ON DELETE SET NULL,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
        content TEXT NOT NULL DEFAULT '',
        model TEXT,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        ttft_ms REAL,
        tokens_per_s REAL,
        finish_reason TEXT CHECK (finish_reason IN ('stop', 'length', 'cancelled', 'error', 'interrupted')),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""", _MESSAGE_COLUMNS, (
        "CREATE INDEX message_by_chat ON message (chat_id, id)",
        "CREATE INDEX message_by_parent ON message (parent_id)",
        "CREATE INDEX message_unfinished ON message (id) WHERE role = 'assistant' AND finish_reason IS NULL",
        *_FTS_TRIGGERS,
    )),
    *_rebuilt("job", """CREATE TABLE job_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ('batch', 'agent')),
        name TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'queued'
            CHECK (status IN ('queued', 'running', 'paused', 'done', 'failed', 'cancelled')),
        source_path TEXT,
        spec TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(spec)),
        total_items INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        owner_pid INTEGER
    )""", _JOB_COLUMNS),
)

# Step 6, branches (regenerated answers kept as alternatives): `parent_id` becomes the message each message follows, and a
# chat records the last message of the branch it shows. Before this step only an answer pointed at the question
# it answers (a user message had no parent, and regenerate deleted the old answer), so every chat was one line
# of messages in id order: each message now follows the one before it in its chat, which is exactly what the
# chat showed and sent. The shown branch of such a chat (current_message_id NULL) is the path to its newest
# message: the same messages, in the same order.
_BRANCHES = (
    "ALTER TABLE chat ADD COLUMN current_message_id INTEGER REFERENCES message (id) ON DELETE SET NULL",
    "CREATE INDEX chat_by_current_message ON chat (current_message_id)",
    """UPDATE message SET parent_id = (
        SELECT max(p.id) FROM message p WHERE p.chat_id = message.chat_id AND p.id < message.id)""",
)

#: The upgrade steps, in order: STEPS[0] takes version 0 (an empty file) to version 1.
STEPS: tuple[Step, ...] = (
    Step("initial schema: chats, messages + FTS5, jobs", _INITIAL),
    Step("job.owner_pid: the process running a job, so opening the store recovers only orphaned jobs",
         ("ALTER TABLE job ADD COLUMN owner_pid INTEGER",)),
    Step("AUTOINCREMENT ids for chats, messages and jobs: a deleted row's id is never reused", _NO_ID_REUSE),
    Step("the writer process (pid, start time) of a streaming answer and of a running job, so opening the store "
         "recovers only the work of processes that are gone",
         ("ALTER TABLE message ADD COLUMN writer_pid INTEGER",
          "ALTER TABLE message ADD COLUMN writer_started REAL",
          "ALTER TABLE job ADD COLUMN owner_started REAL")),
    Step("uploaded files (the OpenAI Files API's batch input files, served by baton serve)", (
        """CREATE TABLE file (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            purpose TEXT NOT NULL,
            filename TEXT NOT NULL,
            bytes INTEGER NOT NULL CHECK (bytes = length(content)),
            content BLOB NOT NULL,
            created_at TEXT NOT NULL
        )""",)),
    Step("branches: each message follows its parent (regenerated answers are alternatives with the same parent), "
         "and a chat records the last message of the branch it shows", _BRANCHES),
    Step("an answer's prompt tokens served from the engine's prefix cache, and the earlier messages left out of "
         "its prompt to fit the model's context (NULL: not recorded, as for every answer stored before)",
         ("ALTER TABLE message ADD COLUMN cached_tokens INTEGER",
          "ALTER TABLE message ADD COLUMN dropped_messages INTEGER")),
)
LATEST = len(STEPS)


async def rollback_quietly(conn: aiosqlite.Connection) -> None:
    """ROLLBACK the open transaction, ignoring "no transaction is active" and a closed connection."""
    try:
        await conn.execute("ROLLBACK")
    except (sqlite3.Error, ValueError):
        pass


async def _pragma_int(conn: aiosqlite.Connection, name: str) -> int:
    rows = await conn.execute_fetchall(f"PRAGMA {name}")
    return int(rows[0][0])


async def check_compatible(conn: aiosqlite.Connection, label: str, steps: tuple[Step, ...] = STEPS) -> int:
    """Read-only check that this file is a Baton database this code can use; returns its version.

    Raises StorageError for a schema newer than `len(steps)`, a database of another application,
    or an unversioned file that already holds tables. Raises sqlite3.Error when unreadable.
    """
    version = await _pragma_int(conn, "user_version")
    app_id = await _pragma_int(conn, "application_id")
    if app_id not in (0, APPLICATION_ID):
        raise StorageError(f"{label}: is an SQLite database of another application "
                           f"(application_id {app_id:#x}), not a Baton history; it was left untouched", label)
    if version > len(steps):
        raise StorageError(f"{label}: was written by a newer Baton (schema version {version}, this version "
                           f"knows up to {len(steps)}); upgrade Baton to open it. The file was left untouched",
                           label)
    if version == 0:
        rows = await conn.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name LIMIT 5")
        if rows:
            names = ", ".join(r[0] for r in rows)
            raise StorageError(f"{label}: is an SQLite database that is not a Baton history (it has tables "
                               f"{names} but no Baton schema version); it was left untouched", label)
    return version


async def migrate(conn: aiosqlite.Connection, steps: tuple[Step, ...] = STEPS) -> int:
    """Apply the missing steps, each in its own transaction; returns the final version.

    Safe against another process migrating at the same time (the version is re-read under the
    write lock). Raises sqlite3.Error (the transaction of the failing step is rolled back), also
    when a step would leave a foreign key pointing nowhere.
    """
    await conn.execute("PRAGMA foreign_keys = OFF")  # a no-op inside a transaction: set before BEGIN
    try:
        while True:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                version = await _pragma_int(conn, "user_version")
                if version >= len(steps):
                    await conn.execute("COMMIT")
                    return version
                step = steps[version]
                for statement in step.statements:
                    await conn.execute(statement)
                if step.run is not None:
                    await step.run(conn)
                if broken := await conn.execute_fetchall("PRAGMA foreign_key_check"):
                    raise sqlite3.IntegrityError(f"schema step {version + 1} ({step.name}) would leave "
                                                 f"{len(broken)} rows with a dangling foreign key")
                await conn.execute(f"PRAGMA user_version = {version + 1}")
            except BaseException:
                await rollback_quietly(conn)
                raise
            await conn.execute("COMMIT")
    finally:
        await conn.execute("PRAGMA foreign_keys = ON")
