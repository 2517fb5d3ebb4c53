"""How `Scheduler.schedule` computes a plan: the admission and memory-pressure loop of one iteration, run on a
projection of the batch and the waiting queue (BATON arXiv 2410.18701 §4.3 preemptive scheduling).

The projection counts every step planned so far as done: admitted prompts and swap-ins are rows (with their
lengths and admission order), preempted rows are queued again as swapped, a long prompt between chunks holds
its K/V. Nothing real is changed: the queue is read through a copy of its heap (pointers only), and requests,
the scheduler's queue and the batch stay as they are until the engine core executes the plan.

With an interactive latency target (`BatchSnapshot.interactive_tpot_slo`), the planner also keeps the background
rows within its cap and bounds background work while a chat decodes (`sched_slo.SloPlanning`, which it inherits).

Pure Python (no torch).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from .config import Priority
from .sched_output import DropPrefill, Preempt, PrefillChunk, PrefillGroup, SchedulerOutput, Step, SwapIn
from .sched_slo import SloAccount, SloPlanning

if TYPE_CHECKING:
    from .kv_budget import MemoryView
    from .request import Request
    from .sched_input import BatchSnapshot


class SchedulerState(Protocol):
    """What planning reads of `backend.scheduler.Scheduler` (named here so this module does not import it: the
    scheduler imports the planner)."""

    _heap: list[Any]
    _waiting: dict[str, Request]
    order_key: Callable[..., tuple[int, int, int]]
    drop_key: Callable[[Request], tuple[int, int]]
    last_chat: tuple[int, int] | None

    def prefilled_tokens(self) -> int: ...

    def choose_victim(self, running: Sequence[Any], for_priority: int | None) -> int | None: ...


@dataclass
class ProjectedRow:
    """A row of the projected batch.

    Attributes:
        request: its request.
        length: cached tokens (tokens).
        start_seq: admission order (preemption takes the most recently started).
        num_preemptions: times it was preempted, this plan included.
    """

    request: Request
    length: int
    start_seq: int
    num_preemptions: int

    @property
    def priority(self) -> Priority:
        return self.request.priority


@dataclass(frozen=True)
class Queued:
    """A queued request as the projection sees it.

    Attributes:
        request: the request.
        swapped_length: tokens of K/V it holds in host memory (preempted), None when it holds none.
        num_prefilled: prompt tokens prefilled by earlier chunks (tokens).
        held_tokens: tokens whose K/V it holds between prefill chunks (tokens; 0 once dropped).
        num_preemptions: times it was preempted, this plan included.
    """

    request: Request
    swapped_length: int | None
    num_prefilled: int
    held_tokens: int
    num_preemptions: int

    @classmethod
    def of(cls, req: Request) -> "Queued":
        swapped = req.swapped.length if req.swapped is not None else None
        return cls(req, swapped, req.num_prefilled, req.held_prefill_tokens, req.num_preemptions)

    @property
    def started(self) -> bool:
        """Swapped out or part-prefilled: it goes before new work of its class."""
        return self.swapped_length is not None or self.num_prefilled > 0


class QueueView:
    """The scheduler's waiting queue as the plan changes it, in admission order, without changing the queue
    (this module is the scheduler's own: it reads the scheduler's heap and index directly).

    Attributes:
        held_tokens: tokens of K/V that queued long prompts hold between prefill chunks (tokens).
    """

    def __init__(self, scheduler: SchedulerState):
        self._heap = list(scheduler._heap)  # a copy of the entries: popping it leaves the scheduler's heap as it is
        self._waiting = scheduler._waiting
        self._order_key = scheduler.order_key
        self._taken: set[str] = set()  # ids taken by the plan
        self._changed: dict[str, Queued] = {}  # put back, or changed, by the plan
        self.held_tokens = scheduler.prefilled_tokens()

    def _state(self, req: Request) -> Queued | None:
        """`req` as the plan sees it, or None when its heap entry is stale (taken, cancelled)."""
        rid = req.request_id
        if rid in self._taken:
            return None
        state = self._changed.get(rid)
        if state is not None:
            return state if state.request is req else None
        return Queued.of(req) if self._waiting.get(rid) is req else None

    def peek(self) -> Queued | None:
        """The request the plan would take next, or None."""
        while self._heap:
            state = self._state(self._heap[0][-1])
            if state is not None:
                return state
            heapq.heappop(self._heap)
        return None

    def pop(self) -> Queued:
        """Take `peek()` (which must not be None)."""
        state = self.peek()
        assert state is not None, "pop from an empty queue"
        heapq.heappop(self._heap)
        rid = state.request.request_id
        self._taken.add(rid)
        self._changed.pop(rid, None)
        self.held_tokens -= state.held_tokens
        return state

    def put_back(self, state: Queued) -> None:
        """Queue a request again (a preempted row, a long prompt between chunks), ordered as `requeue` would."""
        req = state.request
        self._taken.discard(req.request_id)
        self._changed[req.request_id] = state
        self.held_tokens += state.held_tokens
        heapq.heappush(self._heap, (*self._order_key(req.priority, state.started, req.seq), req))

    def drop_prefill(self, state: Queued) -> None:
        """Free the K/V `state` holds between chunks; it keeps its place (as in the scheduler's heap)."""
        self._changed[state.request.request_id] = replace(state, num_prefilled=0, held_tokens=0)
        self.held_tokens -= state.held_tokens

    def prefill_to_drop(self, key: Callable[[Request], tuple]) -> Queued | None:
        """The queued request holding K/V between chunks with the largest `key(request)`, or None."""
        holders = [s for s in self._changed.values() if s.held_tokens]
        holders += [Queued.of(r) for rid, r in self._waiting.items()
                    if r.held_prefill_tokens and rid not in self._taken and rid not in self._changed]
        return max(holders, key=lambda s: key(s.request), default=None)


class Planner(SloPlanning):
    """One iteration's plan: `plan()` runs the admission loop, then memory-pressure relief, on the projection.

    Args:
        scheduler: the waiting queue and the preemption policy (read, not changed).
        batch: the running batch and the budgets.
    """

    def __init__(self, scheduler: SchedulerState, batch: BatchSnapshot):
        self.scheduler, self.batch = scheduler, batch
        self.queue = QueueView(scheduler)
        self.rows = [ProjectedRow(r, n, r.start_seq, r.num_preemptions) for r, n in zip(batch.rows, batch.row_lengths)]
        self.seq_len = batch.seq_len  # window length S of the projected batch (tokens)
        self.group: list[Request] = []  # whole prompts admitted, not yet closed into a PrefillGroup step
        self.steps: list[Step] = []
        self.spent = 0  # prompt tokens planned so far (tokens)
        self.next_start_seq = batch.next_start_seq
        self.slo = SloAccount(batch)  # the interactive step target (`sched_slo.py`)
        self.cap: int | None = None  # background rows the target allows (rows; None: no cap)
        self.target_ms: float | None = None
        self.last_chat = scheduler.last_chat  # (rows, longest) of the last chat a plan saw decoding

    def plan(self) -> SchedulerOutput:
        """The plan (`SchedulerOutput`); its invariants are checked."""
        self.admit()
        self.keep_slo_target()  # after admission: a chat's first token does not wait for these swap-outs
        self.relieve_memory_pressure()
        out = SchedulerOutput(tuple(self.steps), self.spent, len(self.rows), self.seq_len, self.queue.held_tokens,
                              self.cap, self.target_ms, self.slo.held_back, self._forward_ms(), self._interactive())
        out.assert_invariants(self.batch.max_batch_size, self.batch.max_prefill_tokens)
        assert self.cap is None or sum(r.priority != Priority.INTERACTIVE for r in self.rows) <= self.cap, \
            "more background rows than the interactive target allows"
        return out

    # ----------------------------------------------------------------------------------- admission
    def admit(self) -> None:
        """Admit queued work by priority, up to the free rows, the low watermark and the prefill token budget:
        swap-ins, whole prompts (one packed group per run of one priority class), at most one chunk of a
        long prompt; a row of strictly lower priority is preempted when the head does not fit."""
        while (queued := self.queue.peek()) is not None:
            req = queued.request
            if queued.swapped_length is not None:
                length, take = queued.swapped_length, 0
            else:  # prompt tokens to prefill now: all that is left, or a chunk of what the budget has left
                length, take = req.num_prompt_tokens, self._prefill_take(queued)
                if not take:
                    break  # the rest waits for the next iteration: running rows are not held up further
            if self.group and req.priority != self.group[0].priority:
                self._close_group()  # a higher class never waits for a lower one's prompts
            work = self._slo_work(queued, length, take) if req.priority != Priority.INTERACTIVE else ()
            if work is None:
                self.slo.held_back = True
                break  # background work waits while it would hold a chat's step past the target
            if self._room_for(queued, length):
                self.queue.pop()
                self.spent += take
                if work:
                    self.slo.charge(*work)
                if queued.swapped_length is not None:
                    self._swap_in(queued)
                elif take == length:  # a whole prompt: prefilled with the group, in one packed forward
                    if self._new_forward(take):  # between chats a forward stays within its bound (`sched_slo.py`)
                        self._close_group()
                    self.group.append(req)
                else:  # a chunk of a long prompt, alone (it attends to its own earlier chunks)
                    self._close_group()
                    self._chunk(queued, take)
                    if take < length - queued.num_prefilled:
                        break  # a chunk that is not its prompt's last ends the iteration's admissions
                continue
            self._close_group()  # the room may have been the group's: its prompts run before a victim is chosen
            victim, slo = self._slo_victim(req), True  # a row the target would swap out anyway: not counted
            if victim is None:
                victim, slo = self.scheduler.choose_victim(self.rows, int(req.priority)), False
            if victim is None:
                break
            self._preempt(victim, for_request=req, slo=slo)
        self._close_group()

    def _prefill_budget(self, req: Request, remaining: int) -> int:
        """Prompt tokens this iteration may prefill up to and including `req` (tokens; see `EngineConfig`):
        for background prompts while a chat decodes, `max_background_prefill_tokens` and what the interactive
        target leaves (`sched_slo.py`). `remaining`: its prompt tokens not prefilled yet (tokens)."""
        budget, background = self.batch.max_prefill_tokens, self.batch.max_background_prefill_tokens
        if req.priority == Priority.INTERACTIVE:
            return budget
        chatting = any(r.priority == Priority.INTERACTIVE for r in itertools.chain(self.rows, self.group))
        if chatting and background is not None:
            budget = min(budget, background)
        slo = self._slo_tokens(req, remaining)
        if slo is not None and self.spent + slo < budget:
            if self.spent + slo < min(budget, self.spent + remaining) and self._forward_ms() is None:
                self.slo.held_back = True  # (between chats a long prompt is chunked, not held back)
            budget = self.spent + slo
        return budget

    def _prefill_take(self, queued: Queued) -> int:
        """Prompt tokens of `queued` to prefill now: all that is left, or a chunk of what is left of the budget
        (at least `min_chunk_tokens`, unless it is the first prefill of the iteration); 0: it waits."""
        remaining = queued.request.num_prompt_tokens - queued.num_prefilled
        budget = self._prefill_budget(queued.request, remaining)
        left = budget - self.spent
        min_chunk = min(self.batch.min_chunk_tokens, budget)
        return remaining if remaining <= left else (left if left >= min_chunk or not self.spent else 0)

    def _room_for(self, queued: Queued, length: int) -> bool:
        """A free row, and the window with the group and a new row of `length` tokens under the low watermark
        (with the K/V held between chunks, except `queued`'s own, which its new row replaces)."""
        rows = len(self.rows) + len(self.group)
        if rows >= self.batch.max_batch_size:
            return False
        seq_len = max([self.seq_len, *(r.num_prompt_tokens for r in self.group)])
        view = self.batch.memory_view(rows, seq_len, self.queue.held_tokens - queued.held_tokens)
        return view.fits_after_insert(length)

    # ------------------------------------------------------------------------------ planned steps
    def _add_row(self, req: Request, length: int, start_seq: int, num_preemptions: int) -> None:
        self.rows.append(ProjectedRow(req, length, start_seq, num_preemptions))
        self.seq_len = max(self.seq_len, length)

    def _new_start_seq(self) -> int:
        self.next_start_seq += 1
        return self.next_start_seq - 1

    def _close_group(self) -> None:
        if not self.group:
            return
        self.steps.append(PrefillGroup(tuple(self.group)))
        for req in self.group:
            self._add_row(req, req.num_prompt_tokens, self._new_start_seq(), req.num_preemptions)
        self.group = []

    def _swap_in(self, queued: Queued) -> None:
        req = queued.request
        self.steps.append(SwapIn(req))
        self._add_row(req, queued.swapped_length, req.start_seq, queued.num_preemptions)  # keeps its start order

    def _chunk(self, queued: Queued, take: int) -> None:
        req, start = queued.request, queued.num_prefilled
        step = PrefillChunk(req, start, take)
        self.steps.append(step)
        if step.last:
            self._add_row(req, req.num_prompt_tokens, self._new_start_seq(), queued.num_preemptions)
        else:
            self.queue.put_back(replace(queued, num_prefilled=start + take, held_tokens=start + take))

    def _preempt(self, index: int, for_request: Request | None, slo: bool = False) -> None:
        row = self.rows[index]
        last = self.rows.pop()
        if index < len(self.rows):
            self.rows[index] = last  # the last row moves into the freed slot (`RunningBatch.remove`)
        self.seq_len = max((r.length for r in self.rows), default=0)  # all-padding columns trimmed
        self.steps.append(Preempt(row.request, for_request, slo))
        counted = row.num_preemptions + (0 if slo else 1)  # SLO swap-outs do not count (`sched_slo.py`)
        self.queue.put_back(Queued(row.request, row.length, row.request.num_prefilled, 0, counted))

    # ---------------------------------------------------------------------------- memory pressure
    def memory_view(self) -> MemoryView:
        return self.batch.memory_view(len(self.rows), self.seq_len, self.queue.held_tokens)

    def relieve_memory_pressure(self) -> None:
        """While the next step would pass the high watermark, free memory from the lowest-priority work: swap
        out a row (lowest priority, most recent first), or, where a long prompt between prefill chunks has no
        higher priority than that row, drop its partial K/V."""
        while self.memory_view().over_high_watermark():
            victim = self.scheduler.choose_victim(self.rows, None)
            holder = self.queue.prefill_to_drop(self.scheduler.drop_key)
            if holder is not None and (victim is None or holder.request.priority >= self.rows[victim].priority):
                self.steps.append(DropPrefill(holder.request))
                self.queue.drop_prefill(holder)
            elif victim is not None:
                self._preempt(victim, for_request=None)
            else:
                return

