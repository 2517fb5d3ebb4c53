"""`AnswerRecorder`: one assistant answer stored as it streams, the same way for a TUI chat and an agent step.

The stored answer is created at the first token (so an answer that never started leaves no empty row), its
text is written at least every `flush_interval` seconds while it streams (a killed process loses at most that
much), and it is finished with its end and stats (prompt / completion / cached prompt tokens, TTFT, decode
tokens/s, the earlier messages left out of its prompt). The
store's `finish_message` is shielded from cancellation, so an app closing mid-answer still stores it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from .answer import AnswerStats

if TYPE_CHECKING:
    from backend import TokenOutput
    from storage import Message as StoredMessage
    from storage import Store

#: most seconds between two writes of a streaming answer's text to the store
FLUSH_INTERVAL_S = 0.5


class AnswerRecorder:
    """Stores one streaming answer in a chat.

    Args:
        store: the open store.
        chat_id: the chat the answer belongs to.
        parent_id: the user message it answers (None for none).
        model: the model name stored with the answer.
        flush_interval: most seconds between two writes of the text (s).
        dropped_messages: earlier messages of the conversation left out of the prompt to fit the model's context
            (stored with the answer; None: not known, e.g. nothing was fitted).
    """

    def __init__(self, store: Store, chat_id: int, parent_id: int | None, model: str,
                 flush_interval: float = FLUSH_INTERVAL_S, dropped_messages: int | None = None) -> None:
        self.store, self.chat_id, self.parent_id, self.model = store, chat_id, parent_id, model
        self.flush_interval = flush_interval
        self.dropped_messages = dropped_messages
        self.stats = AnswerStats()
        self.message_id: int | None = None
        self._parts: list[str] = []
        self._flushed = 0.0

    @property
    def text(self) -> str:
        """The answer text so far."""
        return "".join(self._parts)

    async def take(self, out: TokenOutput) -> None:
        """Note one engine output: keep its text; create the stored answer at the first token, then write its
        text at most every `flush_interval` seconds.

        Raises:
            StorageError (NotFoundError when the chat was deleted meanwhile).
        """
        self._parts.append(out.text)
        if self.stats.take(out):
            self._flushed = time.perf_counter()
            message = await self.store.start_assistant_message(self.chat_id, self.parent_id, self.model, self.text)
            self.message_id = message.id
        elif self.message_id is not None and time.perf_counter() - self._flushed >= self.flush_interval:
            self._flushed = time.perf_counter()
            await self.store.update_message_text(self.message_id, self.text)

    async def finish(self, finish_reason: str | None = None) -> StoredMessage | None:
        """Store the final text with its end and stats; None when no token ever came (nothing is stored).

        Args:
            finish_reason: how it ended; default the stream's own (`cancelled` when it has none).
        Raises:
            StorageError (NotFoundError when the chat was deleted meanwhile).
        """
        if self.message_id is None:
            return None
        reason = finish_reason or self.stats.finish_reason or "cancelled"
        return await asyncio.shield(self.store.finish_message(
            self.message_id, self.text, reason, self.stats.prompt_tokens, self.stats.completion_tokens,
            *self.stats.rates(), cached_tokens=self.stats.cached_tokens, dropped_messages=self.dropped_messages))
