"""`Store`: the async API over the history database (chats, messages, search, jobs, export)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from . import branches, db, migrations, writers
from .errors import NotFoundError, StorageError
from .export import chat_dict, chat_markdown
from .files import FilesMixin
from .jobs import JobsMixin
from .records import AFTER_SHOWN, FINISH_REASONS, ROLES, Branch, Chat, Message, Placement, SearchHit
from .rows import (CHAT_COLUMNS, MESSAGE_COLUMNS, chat_from_row, fts_query, message_from_row, now,
                   select_list, to_json)

_MESSAGE_SELECT = f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM message"


class Store(JobsMixin, FilesMixin):
    """The chat history and job queue in one SQLite file, through one long-lived connection.

    Create it with `await Store.open(path)` (or `async with await Store.open(...) as store`).
    Every method raises `StorageError` (naming the file) when SQLite fails, `NotFoundError` for a
    missing id where noted, and `ValueError`/`TypeError` for invalid arguments. Writes are
    serialized and each call commits before returning.
    """

    #: Assistant messages left streaming by a process that is gone, marked 'interrupted' on open.
    recovered_messages: int = 0
    #: Jobs left 'running' by a process that is gone, put back to 'queued' on open (to be resumed).
    recovered_jobs: int = 0
    #: The journal mode in effect ("wal" for a file, "memory" for ":memory:").
    journal_mode: str = ""

    @classmethod
    async def open(cls, path: str | os.PathLike[str] | None = None, *, busy_timeout: float = 5.0) -> Store:
        """Open (creating if needed) and upgrade the database; recover what a crash left unfinished.

        `path` defaults to `db.default_db_path()`, whose folder is created if needed; ":memory:" gives a
        throwaway database. An explicit path's folder must exist (a new file is created in it).
        `busy_timeout` is how many seconds to wait for another process's lock.
        Raises StorageError, naming the file, when its folder does not exist (explicit path) or cannot be
        created (default path), when it is a directory, unreadable or unwritable, not an SQLite
        database, corrupt, of another application, of a newer schema, or locked.
        A rejected file is never modified.
        """
        if path is not None and str(path) == db.MEMORY:
            label = db.MEMORY
        else:
            label = os.path.abspath(db.default_db_path() if path is None else Path(path).expanduser())
        conn = await db.connect(label, busy_timeout, create_folder=path is None)
        store = cls(conn, label, busy_timeout)
        try:
            await migrations.check_compatible(conn, label)
            store.journal_mode = await db.configure(conn)
            await migrations.migrate(conn)
            await store._recover()
        except BaseException as exc:
            await conn.close()
            store._conn = None
            if isinstance(exc, (sqlite3.Error, ValueError)):
                raise db.storage_error(label, exc, busy_timeout, opening=True) from exc
            raise
        return store

    async def _recover(self) -> None:
        """Finish what writers that are gone left unfinished (`writers.is_alive`): their streaming answers
        become 'interrupted', their running jobs 'queued'. Work of a live process (this one included) is left
        alone. Also proves at open time that the write lock can be taken within the busy timeout."""
        stamp = now()
        async with self._write():
            answers = [(stamp, row[0]) for row in await self._fetchall(
                "SELECT id, writer_pid, writer_started FROM message WHERE role = 'assistant' AND finish_reason IS NULL")
                if not writers.is_alive(row[1], row[2])]
            await self._run_many("UPDATE message SET finish_reason = 'interrupted', writer_pid = NULL, "
                                 "writer_started = NULL, updated_at = ? WHERE id = ?", answers)
            jobs = [(stamp, row[0]) for row in await self._fetchall(
                "SELECT id, owner_pid, owner_started FROM job WHERE status = 'running'")
                if not writers.is_alive(row[1], row[2])]
            await self._run_many("UPDATE job SET status = 'queued', owner_pid = NULL, owner_started = NULL, "
                                 "updated_at = ? WHERE id = ?", jobs)
        self.recovered_messages, self.recovered_jobs = len(answers), len(jobs)

    async def close(self) -> None:
        """Close the connection (idempotent). Raises StorageError if SQLite fails to close."""
        if self._conn is None:
            return
        async with self._lock:  # let a write in progress finish first
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                await conn.execute("PRAGMA optimize")
            except sqlite3.Error:
                pass
            try:
                await conn.close()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def schema_version(self) -> int:
        """`PRAGMA user_version` of the open database."""
        row = await self._fetchone("PRAGMA user_version")
        return int(row[0]) if row else 0

    # ---- chats -------------------------------------------------------------------------------

    async def create_chat(self, title: str, system_prompt: str | None = None,
                          params: dict[str, Any] | None = None) -> Chat:
        """Create a chat. Raises TypeError (params not JSON), StorageError."""
        stamp = now()
        async with self._write():
            _, chat_id = await self._run(
                "INSERT INTO chat (title, system_prompt, params, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (title, system_prompt, to_json(params or {}), stamp, stamp))
        return await self._require_chat(chat_id)

    async def get_chat(self, chat_id: int) -> Chat | None:
        """The chat, or None if it does not exist."""
        row = await self._fetchone(f"SELECT {', '.join(CHAT_COLUMNS)} FROM chat WHERE id = ?", (chat_id,))
        return None if row is None else chat_from_row(row)

    async def _require_chat(self, chat_id: int | None) -> Chat:
        chat = None if chat_id is None else await self.get_chat(chat_id)
        if chat is None:
            raise NotFoundError(f"{self._path}: chat {chat_id} does not exist", self._path)
        return chat

    async def list_chats(self, include_archived: bool = False) -> list[Chat]:
        """Chats, most recently updated first; archived ones only if asked."""
        where = "" if include_archived else "WHERE archived = 0"
        rows = await self._fetchall(
            f"SELECT {', '.join(CHAT_COLUMNS)} FROM chat {where} ORDER BY updated_at DESC, id DESC")
        return [chat_from_row(r) for r in rows]

    async def _update_chat(self, chat_id: int, assignments: str, params: tuple[Any, ...]) -> Chat:
        async with self._write():
            count, _ = await self._run(f"UPDATE chat SET {assignments}, updated_at = ? WHERE id = ?",
                                       (*params, now(), chat_id))
        if count == 0:
            raise NotFoundError(f"{self._path}: chat {chat_id} does not exist", self._path)
        return await self._require_chat(chat_id)

    async def rename_chat(self, chat_id: int, title: str) -> Chat:
        """Set the title. Raises NotFoundError, StorageError."""
        return await self._update_chat(chat_id, "title = ?", (title,))

    async def archive_chat(self, chat_id: int, archived: bool = True) -> Chat:
        """Archive (hide from `list_chats`) or unarchive. Raises NotFoundError, StorageError."""
        return await self._update_chat(chat_id, "archived = ?", (int(bool(archived)),))

    async def update_chat_settings(self, chat_id: int, system_prompt: str | None,
                                   params: dict[str, Any] | None) -> Chat:
        """Replace the system prompt and sampling params. Raises NotFoundError, TypeError, StorageError."""
        return await self._update_chat(chat_id, "system_prompt = ?, params = ?",
                                       (system_prompt, to_json(params or {})))

    async def delete_chat(self, chat_id: int) -> bool:
        """Delete a chat and all its messages; False if it did not exist."""
        async with self._write():
            count, _ = await self._run("DELETE FROM chat WHERE id = ?", (chat_id,))
        return count > 0

    # ---- messages ----------------------------------------------------------------------------

    async def _insert_message(self, chat_id: int, role: str, content: str, parent_id: int | None | Placement,
                              model: str | None, finish_reason: str | None) -> Message:
        if role not in ROLES:
            raise ValueError(f"role: must be one of {', '.join(ROLES)}, not {role!r}")
        streaming = role == "assistant" and finish_reason is None
        writer_pid, writer_started = writers.this_process() if streaming else (None, None)  # see _recover
        stamp = now()
        async with self._write():
            count, _ = await self._run("UPDATE chat SET updated_at = ? WHERE id = ?", (stamp, chat_id))
            if count == 0:
                raise NotFoundError(f"{self._path}: chat {chat_id} does not exist", self._path)
            if parent_id is AFTER_SHOWN:
                parent_id = await self._tip(chat_id)
            elif parent_id is not None:
                await self._check_parent(chat_id, parent_id)
            _, message_id = await self._run(
                "INSERT INTO message (chat_id, parent_id, role, content, model, finish_reason, writer_pid, "
                "writer_started, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (chat_id, parent_id, role, content, model, finish_reason, writer_pid, writer_started, stamp, stamp))
            await self._run("UPDATE chat SET current_message_id = ? WHERE id = ?", (message_id, chat_id))
        return await self._require_message(message_id)

    async def _check_parent(self, chat_id: int, parent_id: int) -> None:
        """A parent must be a message of the same chat. Raises NotFoundError, ValueError."""
        row = await self._fetchone("SELECT chat_id FROM message WHERE id = ?", (parent_id,))
        if row is None:
            raise NotFoundError(f"{self._path}: message {parent_id} does not exist", self._path)
        if row[0] != chat_id:
            raise ValueError(f"parent_id: message {parent_id} belongs to chat {row[0]}, not to chat {chat_id}")

    async def add_message(self, chat_id: int, role: str, content: str,
                          parent_id: int | None | Placement = AFTER_SHOWN, model: str | None = None) -> Message:
        """Store a complete message (the user's, before it is sent); bumps the chat's updated_at.

        `parent_id`: the message it follows; by default the last message of the branch the chat shows (the
        conversation goes on), None for a first message. The new message becomes the end of the shown branch.
        An assistant message added this way is finished ("stop"). Raises ValueError (role, a parent in another
        chat), NotFoundError (chat or parent), StorageError.
        """
        reason = "stop" if role == "assistant" else None
        return await self._insert_message(chat_id, role, content, parent_id, model, reason)

    async def start_assistant_message(self, chat_id: int, parent_id: int | None | Placement, model: str | None,
                                      content: str = "") -> Message:
        """Create the streaming assistant message (finish_reason None) at the first token.

        `parent_id`: the message it answers (`AFTER_SHOWN`: the end of the shown branch). An answer to a message
        that already has one is an alternative of it (a regenerated answer). The new answer becomes the end of
        the shown branch. This process is recorded as its writer: until it is finished, opening the store (here
        or in another process) leaves it streaming while this process runs, and marks it 'interrupted' once it
        has ended. Raises ValueError (a parent in another chat), NotFoundError (chat or parent), StorageError.
        """
        return await self._insert_message(chat_id, "assistant", content, parent_id, model, None)

    async def update_message_text(self, message_id: int, content: str) -> None:
        """Replace a message's text (while streaming, or an edit); committed before returning.

        Raises NotFoundError, StorageError.
        """
        async with self._write():
            count, _ = await self._run("UPDATE message SET content = ?, updated_at = ? WHERE id = ?",
                                       (content, now(), message_id))
        if count == 0:
            raise NotFoundError(f"{self._path}: message {message_id} does not exist", self._path)

    async def finish_message(self, message_id: int, content: str, finish_reason: str,
                             prompt_tokens: int | None = None, completion_tokens: int | None = None,
                             ttft_ms: float | None = None, tokens_per_s: float | None = None,
                             cached_tokens: int | None = None, dropped_messages: int | None = None) -> Message:
        """Store the final text and stats; `finish_reason` is stop, length, cancelled, error or interrupted.

        Stats (None: not recorded): `prompt_tokens`, `completion_tokens`, `cached_tokens` (prompt tokens served
        from the engine's prefix cache) in tokens; `ttft_ms` (ms); `tokens_per_s`; `dropped_messages` (earlier
        messages left out of the prompt to fit the model's context).

        Raises ValueError (finish_reason), NotFoundError, StorageError.
        """
        if finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason: must be one of {', '.join(FINISH_REASONS)}, not {finish_reason!r}")
        stamp = now()
        async with self._write():
            count, _ = await self._run(
                "UPDATE message SET content = ?, finish_reason = ?, prompt_tokens = ?, completion_tokens = ?, "
                "ttft_ms = ?, tokens_per_s = ?, cached_tokens = ?, dropped_messages = ?, writer_pid = NULL, "
                "writer_started = NULL, updated_at = ? WHERE id = ?",
                (content, finish_reason, prompt_tokens, completion_tokens, ttft_ms, tokens_per_s, cached_tokens,
                 dropped_messages, stamp, message_id))
            if count:
                await self._run("UPDATE chat SET updated_at = ? WHERE id = (SELECT chat_id FROM message "
                                "WHERE id = ?)", (stamp, message_id))
        if count == 0:
            raise NotFoundError(f"{self._path}: message {message_id} does not exist", self._path)
        return await self._require_message(message_id)

    async def get_message(self, message_id: int) -> Message | None:
        """The message, or None."""
        row = await self._fetchone(_MESSAGE_SELECT + " WHERE id = ?", (message_id,))
        return None if row is None else message_from_row(row)

    async def _require_message(self, message_id: int | None) -> Message:
        message = None if message_id is None else await self.get_message(message_id)
        if message is None:
            raise NotFoundError(f"{self._path}: message {message_id} does not exist", self._path)
        return message

    async def list_messages(self, chat_id: int) -> list[Message]:
        """Every message of the chat, in every branch, in the order they were created (`branch` gives the ones
        the chat shows)."""
        rows = await self._fetchall(_MESSAGE_SELECT + " WHERE chat_id = ? ORDER BY id", (chat_id,))
        return [message_from_row(r) for r in rows]

    async def delete_messages_after(self, chat_id: int, message_id: int, *, inclusive: bool = False) -> int:
        """Delete the chat's messages created after `message_id` (and it too if `inclusive`), in every branch.

        For cutting a linear transcript back (an agent task's interrupted step); a later message is never the
        parent of an earlier one, so no message is left without its parent. Returns how many were deleted.
        Raises StorageError.
        """
        op = ">=" if inclusive else ">"
        async with self._write():
            count, _ = await self._run(f"DELETE FROM message WHERE chat_id = ? AND id {op} ?",
                                       (chat_id, message_id))
        return count

    async def delete_message(self, message_id: int) -> int:
        """Delete a message and every message below it (its answers, their alternatives, what followed them).

        For edit-and-resend (the edited message goes with the conversation that followed it). A chat that
        showed a deleted message shows the branch of its newest remaining message. Returns how many messages
        were deleted (0 when it did not exist). Raises StorageError.
        """
        async with self._write():
            count, _ = await self._run(
                "DELETE FROM message WHERE id IN (WITH RECURSIVE below(id) AS (SELECT ? UNION SELECT m.id "
                "FROM message m JOIN below ON m.parent_id = below.id) SELECT id FROM below)", (message_id,))
        return count

    # ---- branches ----------------------------------------------------------------------------

    async def _links(self, chat_id: int) -> dict[int, int | None]:
        """The chat's message id -> parent id (`branches.parents_of`)."""
        rows = await self._fetchall("SELECT id, parent_id FROM message WHERE chat_id = ?", (chat_id,))
        return branches.parents_of((r[0], r[1]) for r in rows)

    async def _current(self, chat_id: int) -> int | None:
        row = await self._fetchone("SELECT current_message_id FROM chat WHERE id = ?", (chat_id,))
        if row is None:
            raise NotFoundError(f"{self._path}: chat {chat_id} does not exist", self._path)
        return row[0]

    async def _tip(self, chat_id: int) -> int | None:
        """The last message of the chat's shown branch (`branches.tip`); None for an empty chat."""
        current = await self._current(chat_id)
        return branches.tip(await self._links(chat_id), current)

    async def branch(self, chat_id: int) -> Branch:
        """The messages the chat shows: the branch ending at its current message (`storage.branches`), with each
        message's alternatives. Raises NotFoundError (chat), StorageError."""
        current = await self._current(chat_id)
        messages = {m.id: m for m in await self.list_messages(chat_id)}
        parents = branches.parents_of((m.id, m.parent_id) for m in messages.values())
        last = branches.tip(parents, current)
        path = [] if last is None else branches.path_to(parents, last)
        return Branch(chat_id, tuple(messages[mid] for mid in path), branches.alternatives(parents, path))

    async def thread(self, message_id: int) -> list[Message]:
        """The message and the messages it follows, from the chat's first message down to it: the conversation
        an answer to it continues. Raises NotFoundError, StorageError."""
        message = await self._require_message(message_id)
        parents = await self._links(message.chat_id)
        path = branches.path_to(parents, message_id)
        rows = await self._fetchall(_MESSAGE_SELECT + f" WHERE id IN ({', '.join('?' * len(path))}) ORDER BY id",
                                    path)
        by_id = {r["id"]: message_from_row(r) for r in rows}
        return [by_id[mid] for mid in path]

    async def show_message(self, message_id: int) -> Branch:
        """Make the chat show the branch through this message: down to the newest message below it (the latest
        conversation that followed it). The chat's updated_at is left alone (showing is not a change of the
        conversation). Returns the branch now shown. Raises NotFoundError, StorageError."""
        message = await self._require_message(message_id)
        async with self._write():
            last = branches.newest_below(await self._links(message.chat_id), message_id)
            await self._run("UPDATE chat SET current_message_id = ? WHERE id = ?", (last, message.chat_id))
        return await self.branch(message.chat_id)

    async def show_alternative(self, message_id: int, step: int) -> Branch:
        """Show the alternative `step` places after (negative: before) this message among the answers to the same
        message (`Branch.alternatives`), stopping at the first and the last; see `show_message`. Returns the
        branch now shown. Raises NotFoundError, StorageError."""
        message = await self._require_message(message_id)
        alternatives = branches.siblings(await self._links(message.chat_id), message_id)
        index = min(max(alternatives.index(message_id) + step, 0), len(alternatives) - 1)
        return await self.show_message(alternatives[index])

    async def search(self, query: str, limit: int = 50, *, include_archived: bool = True,
                     marks: tuple[str, str] = ("«", "»")) -> list[SearchHit]:
        """Full-text search of message text, newest first, in every branch (an alternative answer that is not
        shown is found too: `show_message` shows its branch).

        Any input is safe: each word is searched literally as a word prefix and all words must
        occur. The snippet wraps matches in `marks`. Raises StorageError.
        """
        match = fts_query(query)
        if match is None or limit <= 0:
            return []
        where = "" if include_archived else "AND c.archived = 0"
        rows = await self._fetchall(
            f"SELECT {select_list('m', MESSAGE_COLUMNS, 'm_')}, {select_list('c', CHAT_COLUMNS, 'c_')}, "
            "snippet(message_fts, 0, ?, ?, '…', 16) AS snippet "
            "FROM message_fts JOIN message m ON m.id = message_fts.rowid JOIN chat c ON c.id = m.chat_id "
            f"WHERE message_fts MATCH ? {where} ORDER BY m.created_at DESC, m.id DESC LIMIT ?",
            (marks[0], marks[1], match, limit))
        return [SearchHit(chat_from_row(r, "c_"), message_from_row(r, "m_"), r["snippet"]) for r in rows]

    # ---- export ------------------------------------------------------------------------------

    async def export_chat_markdown(self, chat_id: int) -> str:
        """The chat as a Markdown document: the branch it shows (`branch`), an answer with alternatives marked
        "answer 2 of 3". Raises NotFoundError, StorageError."""
        chat = await self._require_chat(chat_id)
        shown = await self.branch(chat_id)
        return chat_markdown(chat, list(shown.messages), shown.positions())

    async def export_chat_json(self, chat_id: int) -> dict[str, Any]:
        """The chat and the messages of the branch it shows (`branch`) as JSON-ready data; each message has its
        `parent_id` and `alternatives` (how many answers its parent has, itself included).
        Raises NotFoundError, StorageError."""
        chat = await self._require_chat(chat_id)
        shown = await self.branch(chat_id)
        return chat_dict(chat, list(shown.messages), {mid: len(ids) for mid, ids in shown.alternatives.items()})


__all__ = ["Store", "StorageError", "NotFoundError"]
