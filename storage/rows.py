"""Conversions between SQLite rows and the dataclasses, timestamps, JSON, the FTS5 query builder."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone
from typing import Any

from .records import Chat, Job, JobItem, Message

CHAT_COLUMNS = ("id", "title", "system_prompt", "params", "created_at", "updated_at", "archived")
MESSAGE_COLUMNS = ("id", "chat_id", "parent_id", "role", "content", "model", "prompt_tokens",
                   "completion_tokens", "ttft_ms", "tokens_per_s", "finish_reason", "created_at", "updated_at",
                   "cached_tokens", "dropped_messages")
ITEM_COLUMNS = ("id", "job_id", "idx", "custom_id", "request", "status", "result", "error", "completed_at")

_last_now: datetime | None = None


def now() -> str:
    """Current UTC time as a fixed-width ISO-8601 string, strictly increasing within this process.

    Strictly increasing keeps "newest first" orderings stable even for writes in the same microsecond.
    """
    global _last_now
    t = datetime.now(timezone.utc)
    if _last_now is not None and t <= _last_now:
        t = _last_now + timedelta(microseconds=1)
    _last_now = t
    return t.isoformat(timespec="microseconds")


def parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def to_json(value: Any) -> str:
    """JSON text for a column; raises TypeError for values JSON cannot hold."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def from_json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def select_list(alias: str, columns: tuple[str, ...], prefix: str = "") -> str:
    """`a.id AS p_id, a.title AS p_title, ...` for selecting two tables' rows in one query."""
    return ", ".join(f"{alias}.{c} AS {prefix}{c}" for c in columns)


def chat_from_row(row: sqlite3.Row, prefix: str = "") -> Chat:
    return Chat(
        id=row[prefix + "id"],
        title=row[prefix + "title"],
        system_prompt=row[prefix + "system_prompt"],
        params=from_json(row[prefix + "params"]) or {},
        created_at=datetime.fromisoformat(row[prefix + "created_at"]),
        updated_at=datetime.fromisoformat(row[prefix + "updated_at"]),
        archived=bool(row[prefix + "archived"]),
    )


def message_from_row(row: sqlite3.Row, prefix: str = "") -> Message:
    values = {c: row[prefix + c] for c in MESSAGE_COLUMNS}
    values["created_at"] = datetime.fromisoformat(values["created_at"])
    values["updated_at"] = datetime.fromisoformat(values["updated_at"])
    return Message(**values)


def job_from_row(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"], kind=row["kind"], name=row["name"], status=row["status"],
        source_path=row["source_path"], spec=from_json(row["spec"]) or {},
        total=row["total_items"], done=row["done"], failed=row["failed"],
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )


def item_from_row(row: sqlite3.Row) -> JobItem:
    return JobItem(
        id=row["id"], job_id=row["job_id"], idx=row["idx"], custom_id=row["custom_id"],
        request=from_json(row["request"]), status=row["status"], result=from_json(row["result"]),
        error=row["error"], completed_at=parse_time(row["completed_at"]),
    )


def fts_query(text: str) -> str | None:
    """Turn free user input into a safe FTS5 query, or None when it has nothing to search for.

    Every whitespace-separated word becomes a quoted phrase (so FTS5 operators and quotes in the
    input are plain text) matched as a prefix; all words must occur (AND). Words without any
    letter or digit are dropped.
    """
    # NUL ends an FTS5 query string early ("unterminated string"); lone surrogates cannot be encoded.
    text = text.encode("utf-8", "replace").decode("utf-8").replace("\x00", " ")
    words = [w for w in text.split() if any(ch.isalnum() for ch in w)]
    if not words:
        return None
    return " ".join('"' + w.replace('"', '""') + '"*' for w in words)
