"""How one engine stream went: its token counts, times and end (`AnswerStats`), which ends count as a complete
answer, and the stats line every front end shows under an answer (`stats_line`, `dropped_note`).

The rates follow vLLM's `benchmark_serving` definitions: TTFT from submission to the first token, and decode
tokens/s over the tokens after the first (so a one-token answer has no decode rate).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backend import TokenOutput

#: finish reasons of an answer that ran to its end (an EOS or stop string, or `max_tokens`)
COMPLETE_REASONS = frozenset({"stop", "length"})
#: how the stats line names an answer's end other than `stop`
ENDINGS = {"length": "length cap", "cancelled": "stopped", "error": "failed", "interrupted": "interrupted"}


def stats_line(completion_tokens: int | None, ttft_ms: float | None, tokens_per_s: float | None,
               finish_reason: str | None, cached_tokens: int | None = None,
               dropped_messages: int | None = None) -> str:
    """The stats line of an answer, as the TUI shows it under the answer and `baton chat` prints it on stderr,
    e.g. `42 tokens · TTFT 35 ms · 512 cached · 51.2 tok/s` (then `· length cap`, `· stopped`, ... for other ends
    than `stop`, and `· 6 earlier messages left out` when the conversation was cut to fit the context).

    Args:
        completion_tokens: the answer's tokens (None: unknown, left out).
        ttft_ms: time to the first token (ms; None: left out).
        tokens_per_s: decode tokens/s after the first token (None: left out, e.g. a one-token answer).
        finish_reason: how it ended (`ENDINGS` names the ends other than `stop`).
        cached_tokens: prompt tokens served from the engine's prefix cache (tokens; shown only when > 0).
        dropped_messages: earlier messages left out of the prompt to fit the model's context (shown only when
            > 0).
    """
    parts = []
    if completion_tokens is not None:
        parts.append(f"{completion_tokens} tokens")
    if ttft_ms is not None:
        parts.append(f"TTFT {ttft_ms:.0f} ms")
    if cached_tokens:
        parts.append(f"{cached_tokens} cached")
    if tokens_per_s is not None:
        parts.append(f"{tokens_per_s:.1f} tok/s")
    if finish_reason in ENDINGS:
        parts.append(ENDINGS[finish_reason])
    if dropped_messages:
        parts.append(dropped_note(dropped_messages))
    return " · ".join(parts)


def dropped_note(dropped_messages: int) -> str:
    """How the stats line (and the TUI's note while such an answer streams) says that a conversation's earliest
    messages were left out of the prompt to fit the model's context, e.g. `6 earlier messages left out`."""
    return f"{dropped_messages} earlier message{'s' * (dropped_messages != 1)} left out"


def is_complete(finish_reason: str | None) -> bool:
    """Whether an answer with this finish reason ran to its end (`stop` or `length`), as opposed to one that
    was cancelled, failed or is still running."""
    return finish_reason in COMPLETE_REASONS


@dataclass
class AnswerStats:
    """What one engine stream produced: counts from its latest output, times from `time.perf_counter` (s).

    Attributes:
        finish_reason, error: from the stream's last output (None while it runs).
        prompt_tokens, completion_tokens: token counts (tokens).
        cached_tokens: prompt tokens served from the engine's prefix cache (tokens; 0 when none were, or the
            engine does not say).
        submitted: when the request was sent (s, perf_counter).
        first_token: when its first token arrived (s, perf_counter), None before.
    """

    finish_reason: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None

    def take(self, out: TokenOutput) -> bool:
        """Note one engine output. Returns True when it carries the stream's first token."""
        self.prompt_tokens, self.completion_tokens = out.prompt_tokens, out.completion_tokens
        self.cached_tokens = out.cached_tokens
        if out.finished:
            self.finish_reason, self.error = out.finish_reason, out.error
        if out.token_id is not None and self.first_token is None:
            self.first_token = time.perf_counter()
            return True
        return False

    def rates(self) -> tuple[float | None, float | None]:
        """(TTFT in ms, decode tokens/s after the first token) as of now; None where unknown."""
        if self.first_token is None:
            return None, None
        ttft_ms = (self.first_token - self.submitted) * 1000
        elapsed = time.perf_counter() - self.first_token
        rate = (self.completion_tokens - 1) / elapsed if self.completion_tokens > 1 and elapsed > 0 else None
        return ttft_ms, rate
