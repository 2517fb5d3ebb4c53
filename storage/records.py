"""Typed rows returned by `storage.Store` (plain frozen dataclasses, no database imports).

Timestamps are timezone-aware UTC `datetime`s. JSON columns come back as Python objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Literal, NamedTuple

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "cancelled", "error", "interrupted"]
JobKind = Literal["batch", "agent"]
JobStatus = Literal["queued", "running", "paused", "done", "failed", "cancelled"]
ItemStatus = Literal["pending", "done", "failed"]

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
#: Reasons the app may pass to `finish_message`: "cancelled" is a stop the user asked for, "interrupted" an
#: answer cut off by the app closing (recovery on open marks those a killed process left the same way).
FINISH_REASONS: tuple[str, ...] = ("stop", "length", "cancelled", "error", "interrupted")
JOB_KINDS: tuple[str, ...] = ("batch", "agent")
JOB_STATUSES: tuple[str, ...] = ("queued", "running", "paused", "done", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class Chat:
    """One conversation. `params` holds the chat's sampling settings (a JSON object)."""

    id: int
    title: str
    system_prompt: str | None
    params: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    archived: bool


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a chat.

    For an assistant message, `finish_reason is None` means it is still streaming; after a crash
    it becomes "interrupted" (its text is kept). User/system/tool messages have no finish reason.

    An answer's stats (None when not recorded): `prompt_tokens`, `completion_tokens` (tokens), `ttft_ms` (time
    to the first token, ms), `tokens_per_s` (decode tokens/s), `cached_tokens` (prompt tokens served from the
    engine's prefix cache), `dropped_messages` (earlier messages of the conversation left out of its prompt so
    that it fit the model's context; 0 when none were).
    """

    id: int
    chat_id: int
    parent_id: int | None
    role: Role
    content: str
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    ttft_ms: float | None
    tokens_per_s: float | None
    finish_reason: FinishReason | None
    created_at: datetime
    updated_at: datetime
    cached_tokens: int | None = None
    dropped_messages: int | None = None

    @property
    def streaming(self) -> bool:
        """True for an assistant message that has not been finished yet."""
        return self.role == "assistant" and self.finish_reason is None


class Placement(Enum):
    """Where `Store.add_message` puts a message when no `parent_id` is given."""

    #: after the last message of the branch the chat shows (`Branch`): the conversation goes on
    AFTER_SHOWN = "after the shown branch"


AFTER_SHOWN = Placement.AFTER_SHOWN


@dataclass(frozen=True, slots=True)
class Branch:
    """The messages a chat shows: one path through its tree of alternatives, oldest first.

    A regenerated answer is stored beside the answer it replaces (the same parent); such answers are
    alternatives of each other, and the chat shows one of them at a time (`storage.branches` has the rules).

    Attributes:
        chat_id: the chat.
        messages: the shown messages, from the chat's first message to the shown branch's last one.
        alternatives: for each shown message's id, the ids of it and its alternatives, oldest first (a message
            without alternatives maps to a one-id tuple).
    """

    chat_id: int
    messages: tuple[Message, ...]
    alternatives: dict[int, tuple[int, ...]]

    def position(self, message_id: int) -> tuple[int, int]:
        """`(number, count)` of a shown message among its alternatives, e.g. `(2, 3)` for "answer 2 of 3"
        (number from 1). Raises KeyError for a message that is not shown."""
        ids = self.alternatives[message_id]
        return ids.index(message_id) + 1, len(ids)

    def positions(self) -> dict[int, tuple[int, int]]:
        """`position` of every shown message that has alternatives (count > 1), by message id."""
        return {mid: self.position(mid) for mid, ids in self.alternatives.items() if len(ids) > 1}


class SearchHit(NamedTuple):
    """A full-text search result: `(chat, message, snippet)`; the snippet has the matches marked."""

    chat: Chat
    message: Message
    snippet: str


@dataclass(frozen=True, slots=True)
class Job:
    """A persistent background job; `done`/`failed`/`total` count its items."""

    id: int
    kind: JobKind
    name: str
    status: JobStatus
    source_path: str | None
    spec: dict[str, Any]
    total: int
    done: int
    failed: int
    created_at: datetime
    updated_at: datetime

    @property
    def pending(self) -> int:
        """Items neither done nor failed."""
        return self.total - self.done - self.failed


@dataclass(frozen=True, slots=True)
class StoredFile:
    """An uploaded file (the OpenAI Files API's `File` object), without its content
    (`Store.file_content` reads that).

    Attributes:
        id: the store's id (the API's `file-<id>`).
        purpose: what it was uploaded for (`batch`).
        filename: the name it was uploaded under.
        bytes: its size (bytes).
        created_at: when it was uploaded (UTC).
    """

    id: int
    purpose: str
    filename: str
    bytes: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class JobItem:
    """One request of a job; `idx` is its position in the job's input (unique within the job)."""

    id: int
    job_id: int
    idx: int
    custom_id: str | None
    request: dict[str, Any]
    status: ItemStatus
    result: Any
    error: str | None
    completed_at: datetime | None
