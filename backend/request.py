"""A request's life inside the engine, and what the engine hands back per token.

Statuses follow vLLM v1's `RequestStatus`: WAITING (queued, not prefilled), RUNNING (a row of the batch),
PREEMPTED (swapped out to host memory; used by the preemptive scheduler), PREFILLING (a long prompt between
two chunks of its chunked prefill), and the finished states.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .config import Priority, SamplingParams
from .detokenizer import IncrementalDetokenizer

if TYPE_CHECKING:  # annotations only: this module imports no torch, so the scheduler is testable without it
    import torch

    from .row_kv import RowKV


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "swapped"
    PREFILLING = "prefilling"  # part of a long prompt prefilled (chunked prefill), waiting for its next chunk
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH_CAPPED = "length"
    FINISHED_ABORTED = "cancelled"
    FINISHED_ERROR = "error"

    @property
    def is_finished(self) -> bool:
        return self.value in ("stop", "length", "cancelled", "error")


@dataclass(frozen=True)
class TokenOutput:
    """One item of a request's stream.

    Attributes:
        request_id: the request.
        token_id: the token generated at this step, or None on a closing item that carries no token
            (cancelled, error).
        text: the text delta (may be empty: held back for UTF-8 or a possible stop string).
        finish_reason: None while streaming; on the last item `stop` (EOS or stop string), `length`
            (`max_tokens` or the context limit), `cancelled` or `error`.
        prompt_tokens: prompt length (tokens).
        completion_tokens: tokens generated so far.
        error: a message when `finish_reason == "error"`.
        engine_step: decode steps the engine had run when this item was emitted (for latency accounting).
        arrival_step: decode steps the engine had run when it took this request from its inbox, so
            `engine_step - arrival_step` is the number of decode steps the request waited through.
        cached_tokens: prompt tokens whose K/V came from the prefix cache instead of being prefilled
            (tokens; OpenAI's `usage.prompt_tokens_details.cached_tokens`).
    """

    request_id: str
    token_id: int | None
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
    engine_step: int = 0
    arrival_step: int = 0
    cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(eq=False)
class Request:
    """Engine-side state of one request (owned by the engine thread after submission).

    `emit` is called from the engine thread with each `TokenOutput`; it must be thread-safe and quick
    (e.g. `loop.call_soon_threadsafe(queue.put_nowait, out)`).
    """

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    priority: Priority
    emit: Callable[[TokenOutput], None]
    detokenizer: IncrementalDetokenizer
    max_len: int  # context limit for this request (tokens)
    arrival: float = field(default_factory=time.perf_counter)
    seq: int = 0  # arrival order (FCFS tie-break)
    arrival_step: int = 0  # decode steps the engine had run when it received the request
    start_seq: int = -1  # admission order (-1: never admitted); preemption takes the most recent
    num_preemptions: int = 0
    swapped: "RowKV | None" = None  # K/V in host memory while preempted
    num_prefilled: int = 0  # prompt tokens prefilled so far by chunked prefill (0: none, or all at once)
    prefill_cache: Any = None  # the transformers cache holding those tokens' K/V until the last chunk
    num_cached_tokens: int = 0  # prompt tokens whose K/V came from the prefix cache (tokens)
    prefix_probe: int = -1  # the prefix cache's version when it last missed for this prompt
    prefix_counted: bool = False  # counted in the prefix cache's query/hit counters
    status: RequestStatus = RequestStatus.WAITING
    output_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    first_token_time: float | None = None
    finish_time: float | None = None

    @property
    def held_prefill_tokens(self) -> int:
        """Prompt tokens whose K/V this request holds in its own cache between prefill chunks (0 when it
        holds none: never chunked, finished prefilling, or its partial K/V were dropped)."""
        return self.num_prefilled if self.prefill_cache is not None else 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def context_len(self) -> int:
        """Tokens of prompt plus output so far."""
        return len(self.prompt_ids) + len(self.output_ids)
