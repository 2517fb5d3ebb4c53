"""`LiveAnswer`: one TUI chat's turn in flight, the text posted to the screen so far (framework-free)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..chat.recorder import AnswerRecorder


@dataclass
class LiveAnswer:
    """One chat's turn in flight: `state` is storing -> queued (no model yet) -> running."""

    chat_id: int
    title: str
    parent_id: int | None = None  # the stored message it answers, once known
    alternatives: int = 1  # answers to that message, this one included (> 1: a regenerated answer)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = "storing"
    parts: list[str] = field(default_factory=list)
    recorder: AnswerRecorder | None = None  # stores the answer once it is sent to the engine
    stop_requested: bool = False
    cancel_sent: bool = False  # the engine was asked to cancel it (after a stop request)
    posted: int = 0  # characters of the text already posted in `TokensStreamed` messages
    flush: asyncio.TimerHandle | None = None  # the pending post of the rest
    dropped_messages: int = 0  # earlier messages left out of the prompt to fit the model's context

    @property
    def message_id(self) -> int | None:
        """The stored answer's id once its first token is stored, else None."""
        return None if self.recorder is None else self.recorder.message_id

    @property
    def text(self) -> str:
        """The answer text streamed so far."""
        return "".join(self.parts)

    def snapshot(self) -> LiveAnswer:
        """A copy holding the text posted so far: the `TokensStreamed` posted after it continue it exactly."""
        return replace(self, parts=[self.text[:self.posted]], flush=None)
