"""What the scheduler decided for one engine iteration: a plain plan that the engine core executes.

The shape of vLLM v1's `SchedulerOutput` (`vllm/v1/core/sched/output.py`) and of nano-vllm's scheduler, with
one difference: BATON's loop interleaves its decisions (a packed prefill group is run before a request of
another priority class is considered, and before a victim is chosen, so the room it takes is known), so the
plan is an ORDERED tuple of steps, to be executed in order, plus a few summary fields. Each step names the
requests it acts on; none of them is changed by planning (pure Python, no torch).

Steps (BATON arXiv 2410.18701 §4):
    SwapIn        a preempted request's K/V come back from host memory as a new row (§4.3)
    PrefillGroup  whole prompts of one priority class, prefilled together in one packed forward apart from
                  the decoding rows, each then embedded as a new row (§4.1 vector shaping, §4.2 KV embedding)
    PrefillChunk  the next chunk of one long prompt (chunked prefill); after its last chunk it joins the batch
    Preempt       a running row swapped out to host memory and queued again (§4.3)
    DropPrefill   the K/V a long prompt holds between chunks freed under memory pressure (it restarts later)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .request import Request


@dataclass(frozen=True)
class SwapIn:
    """Take a swapped-out request from the queue and embed its K/V (host memory) back as a new row."""

    request: Request

    @property
    def requests(self) -> tuple[Request, ...]:
        return (self.request,)


@dataclass(frozen=True)
class PrefillGroup:
    """Take whole prompts (one priority class) from the queue, prefill them in one packed `[1, sum L]` forward,
    emit each first token and embed each one's K/V as a new row, in this order."""

    requests: tuple[Request, ...]


@dataclass(frozen=True)
class PrefillChunk:
    """Take a long prompt from the queue and prefill its tokens `start .. start + num_tokens - 1` alone,
    attending to its earlier chunks. After the last chunk it joins the batch; before it, it is queued again
    (`PREFILLING`), holding its K/V.

    Attributes:
        request: the long prompt's request.
        start: prompt tokens prefilled by earlier chunks (tokens).
        num_tokens: tokens in this chunk (>= 1).
    """

    request: Request
    start: int
    num_tokens: int

    @property
    def requests(self) -> tuple[Request, ...]:
        return (self.request,)

    @property
    def last(self) -> bool:
        """This chunk ends the prompt: the request emits its first token and joins the batch."""
        return self.start + self.num_tokens == self.request.num_prompt_tokens


@dataclass(frozen=True)
class Preempt:
    """Swap a running row out: copy its K/V to host memory, free the row, queue the request again.

    Attributes:
        request: the row's request.
        for_request: the request it makes room for (admission), or None (memory pressure, SLO).
        slo: a background row over the interactive target's cap (`sched_slo.py`): not counted toward
            `max_preemptions`.
    """

    request: Request
    for_request: Request | None = None
    slo: bool = False

    @property
    def requests(self) -> tuple[Request, ...]:
        return (self.request,)


@dataclass(frozen=True)
class DropPrefill:
    """Free the K/V a queued long prompt holds between prefill chunks (memory pressure); its prefill starts
    again later (it has emitted nothing, so nothing is lost or repeated)."""

    request: Request

    @property
    def requests(self) -> tuple[Request, ...]:
        return (self.request,)


Step = SwapIn | PrefillGroup | PrefillChunk | Preempt | DropPrefill
ADMISSIONS = (SwapIn, PrefillGroup, PrefillChunk)  # the steps that take requests from the waiting queue


@dataclass(frozen=True)
class SchedulerOutput:
    """The scheduler's plan for one iteration (`Scheduler.schedule`), computed against a projection of the batch
    in which every earlier step has succeeded. When one fails at execution (a prefill fault, or a request
    that ends at its first token) the rest stays safe: a failure only frees room.

    Attributes:
        steps: what to do, in execution order: admissions (swap-ins, prefill groups, chunks, and the
            preemptions that make room for them), then memory-pressure relief (preemptions, dropped prefills).
        num_prefill_tokens: prompt tokens the plan prefills (whole prompts and chunks; tokens); at most
            `max_prefill_tokens`.
        num_rows: rows of the batch after the plan (rows).
        seq_len: the batch's window length after the plan (tokens).
        num_held_prefill_tokens: prompt tokens whose K/V queued long prompts hold between chunks after the
            plan (tokens).
        background_cap: the most background rows the interactive target lets the batch carry after the
            plan (rows); None: no cap (no target, no interactive request, or the cost model not ready).
        step_target_ms: the target an iteration keeps while an interactive request decodes (ms; None: none).
        slo_held_back: background work (a newcomer, a swap-in, prompt tokens) waits because of the target.
        forward_ms: while the target is set and no chat decodes, the most one background prefill forward of
            the plan is predicted to take (ms; a chat arriving stops it at a decoder layer); None: no bound
            (`sched_slo.py`).
        chat: (interactive rows, their longest; rows, tokens) the plan saw decoding or about to; None: none.
    """

    steps: tuple[Step, ...] = ()
    num_prefill_tokens: int = 0
    num_rows: int = 0
    seq_len: int = 0
    num_held_prefill_tokens: int = 0
    background_cap: int | None = None
    step_target_ms: float | None = None
    slo_held_back: bool = False
    forward_ms: float | None = None
    chat: tuple[int, int] | None = None

    @property
    def admitted(self) -> tuple[Request, ...]:
        """The requests the plan takes from the waiting queue, in order (swap-ins, prompts, chunks)."""
        return tuple(r for s in self.steps if isinstance(s, ADMISSIONS) for r in s.requests)

    @property
    def preempted(self) -> tuple[Request, ...]:
        """The rows the plan swaps out, in order."""
        return tuple(s.request for s in self.steps if isinstance(s, Preempt))

    def assert_invariants(self, max_batch_size: int, max_prefill_tokens: int) -> None:
        """Assert what every plan keeps (vLLM asserts its own at the end of `schedule()`); one pass over the
        steps. Raises AssertionError (a scheduler bug) otherwise.

        Args:
            max_batch_size: most rows (rows).
            max_prefill_tokens: most prompt tokens prefilled in one iteration (tokens).
        """
        assert self.num_rows <= max_batch_size, f"{self.num_rows} rows planned, at most {max_batch_size}"
        groups = [s for s in self.steps if isinstance(s, PrefillGroup)]
        chunks = [s for s in self.steps if isinstance(s, PrefillChunk)]
        assert self.num_prefill_tokens == (sum(r.num_prompt_tokens for g in groups for r in g.requests)
                                           + sum(c.num_tokens for c in chunks)) <= max_prefill_tokens
        assert all(g.requests and len({r.priority for r in g.requests}) == 1 for g in groups), "one class a group"
        assert all(c.num_tokens >= 1 for c in chunks), "an empty chunk"
        admitted = self.admitted
        assert len(set(admitted)) == len(admitted), "a request is taken from the queue twice"
        partial = next((i for i, s in enumerate(self.steps) if isinstance(s, PrefillChunk) and not s.last), None)
        assert partial is None or not any(isinstance(s, ADMISSIONS) for s in self.steps[partial + 1:]), \
            "something admitted after a chunk that spent the rest of the budget"
