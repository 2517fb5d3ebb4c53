"""The TUI's application messages: past-tense facts posted by workers and controllers, handled by screens.

Workers (model loading, store operations, generations) never touch widgets: they post one of these, and the
screen's `@on(...)` handlers change the widgets. Every message names the chat it is about (`chat_id`) so a
screen showing another chat can ignore it. Widget-local messages live inside their widget classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from backend import Engine
    from storage import Branch, Chat, SearchHit
    from storage import Message as StoredMessage

    from ..jobs import JobProgress
    from .live_answer import LiveAnswer


# ----------------------------------------------------------------------------------------- model
@dataclass
class ModelLoaded(Message):
    """The engine is started and ready to generate."""

    engine: Engine
    seconds: float | None = None  # load time (s), None when the engine came ready-made


@dataclass
class ModelLoadFailed(Message):
    """The model could not be loaded; `error` says why (the worker also fails, which notifies)."""

    error: str


# ----------------------------------------------------------------------------------------- chats
@dataclass
class ChatsLoaded(Message):
    """The chat list was (re)read from the store, most recently updated first."""

    chats: list[Chat]
    show_archived: bool
    select: int | None = None  # a chat to highlight in the list


@dataclass
class ChatOpened(Message):
    """A chat and the stored messages it shows (its shown branch) were read; `live` is its answer streaming right
    now, if any (`messages` then end with the message it answers); `positions` maps the id of each message that
    has alternatives to `(number, count)`, e.g. `(2, 3)` for "answer 2/3"."""

    chat: Chat
    messages: list[StoredMessage]
    live: LiveAnswer | None = None
    positions: dict[int, tuple[int, int]] = field(default_factory=dict)


@dataclass
class ChatCreated(Message):
    """A new chat was stored."""

    chat: Chat


@dataclass
class ChatChanged(Message):
    """A chat's title, settings or archived flag was stored."""

    chat: Chat


@dataclass
class ChatArchived(Message):
    """A chat was archived, or brought back (`chat.archived` says which)."""

    chat: Chat


@dataclass
class ChatDeleted(Message):
    """A chat and its messages were deleted."""

    chat_id: int


@dataclass
class ChatExported(Message):
    """A chat was written to files."""

    chat_id: int
    paths: list[Path] = field(default_factory=list)


@dataclass
class SearchFinished(Message):
    """Full-text search results for `query`, newest first."""

    query: str
    hits: list[SearchHit]


# -------------------------------------------------------------------------------------- messages
@dataclass
class UserMessageStored(Message):
    """The user's message was stored (always before it is sent to the engine)."""

    chat_id: int
    message: StoredMessage


@dataclass
class MessagesDeleted(Message):
    """Messages of a chat were deleted from `message_id` on (or after it when not `inclusive`)."""

    chat_id: int
    message_id: int
    inclusive: bool


@dataclass
class AnswersSetAside(Message):
    """A chat answers `message_id` again: the answers after it are kept (the new answer is their alternative)
    and give way on screen to the new one."""

    chat_id: int
    message_id: int


@dataclass
class BranchChanged(Message):
    """The branch a chat shows changed in the store (e.g. a regenerate stopped before its first token, so its
    answers set aside are shown again); read it again."""

    chat_id: int


@dataclass
class BranchShown(Message):
    """The branch a chat shows was read (after paging to another alternative, or `BranchChanged`); `focus` is
    the message to put the cursor on (the alternative paged to), if any."""

    chat_id: int
    branch: Branch
    focus: int | None = None


# ------------------------------------------------------------------------------------ generation
@dataclass
class GenerationQueued(Message):
    """A chat's answer waits for the model to finish loading; `alternatives` counts the answers to the same
    message, this one included (> 1: it is a regenerated answer, shown as "answer n/n")."""

    chat_id: int
    alternatives: int = 1


@dataclass
class GenerationStarted(Message):
    """A chat's request was handed to the engine; `alternatives` as in `GenerationQueued`."""

    chat_id: int
    request_id: str
    alternatives: int = 1


@dataclass
class PromptFitted(Message):
    """A chat's conversation was longer than the model's context: its `dropped_messages` earliest messages are
    left out of the prompt of the answer starting now (posted only when some are, before its first token)."""

    chat_id: int
    dropped_messages: int


@dataclass
class TokensStreamed(Message):
    """New answer text arrived for a chat (a delta to append)."""

    chat_id: int
    request_id: str
    text: str


@dataclass
class GenerationStopping(Message):
    """The user asked to stop a chat's answer; it ends (`GenerationFinished`) once the engine has let go of it,
    after the step in flight (seconds on a busy CPU)."""

    chat_id: int


@dataclass
class GenerationFinished(Message):
    """A chat's answer ended (`stop`, `length`, `cancelled`, or `interrupted` by the app closing); `message` is
    the stored answer (None when it ended before its first token, so nothing was stored)."""

    chat_id: int
    request_id: str | None
    finish_reason: str
    message: StoredMessage | None


@dataclass
class GenerationFailed(Message):
    """A chat's answer failed; `message` is the stored partial answer, if any (the worker also fails,
    which notifies)."""

    chat_id: int
    request_id: str | None
    error: str
    message: StoredMessage | None = None


# ------------------------------------------------------------------------------------------- app
@dataclass
class PanelToggled(Message):
    """The live panel was shown or hidden (the app remembers it)."""

    shown: bool


# ------------------------------------------------------------------------------------------ jobs
@dataclass
class JobProgressed(Message):
    """A background job running in the app moved on (an item finished, its status changed, or a periodic
    update while it runs)."""

    progress: JobProgress
