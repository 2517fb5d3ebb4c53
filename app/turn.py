"""One chat turn's state: the answer streaming in, its stream's counters, and the prompt it is sent with."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field, replace

from storage import Message as StoredMessage


@dataclass
class LiveAnswer:
    """One chat's turn in flight: `state` is storing -> queued (no model yet) -> running."""

    chat_id: int
    title: str
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = "storing"
    parts: list[str] = field(default_factory=list)
    message_id: int | None = None
    stop_requested: bool = False
    posted: int = 0  # characters of the text already posted in `TokensStreamed` messages
    flush: asyncio.TimerHandle | None = None  # the pending post of the rest

    @property
    def text(self) -> str:
        """The answer text streamed so far."""
        return "".join(self.parts)

    def snapshot(self) -> LiveAnswer:
        """A copy holding the text posted so far: the `TokensStreamed` posted after it continue it exactly."""
        return replace(self, parts=[self.text[:self.posted]], flush=None)


@dataclass
class StreamStats:
    """What one engine stream produced (counts from its last output, times from perf_counter)."""

    finish_reason: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    last_flush: float = 0.0
    cancel_sent: bool = False

    def rates(self) -> tuple[float | None, float | None]:
        """(TTFT in ms, decode tokens/s after the first token) of a finished stream; None where unknown."""
        if self.first_token is None:
            return None, None
        ttft_ms = (self.first_token - self.submitted) * 1000
        elapsed = time.perf_counter() - self.first_token
        rate = (self.completion_tokens - 1) / elapsed if self.completion_tokens > 1 and elapsed > 0 else None
        return ttft_ms, rate


def prompt_messages(system_prompt: str | None, stored: list[StoredMessage]) -> list[dict[str, str]]:
    """The chat messages sent to the engine: the system prompt, then every non-empty user/assistant turn."""
    prompt = [{"role": "system", "content": system_prompt}] if system_prompt else []
    prompt += [{"role": x.role, "content": x.content} for x in stored
               if x.role in ("user", "assistant") and x.content.strip()]
    return prompt
