"""Who runs next: the waiting queue, priority classes, preemption choice, and each iteration's plan.

Pure Python (no torch), so it is testable without a model (the nano-vllm habit). Once per iteration
`Scheduler.schedule(batch)` reads a `BatchSnapshot` (the running batch and the budgets) and returns a
`SchedulerOutput` (`sched_output.py`, vLLM v1's name): the ordered steps the engine core executes. Planning
changes nothing; it runs against a projection of the batch and the queue in which every earlier step has
succeeded (the projection is in `sched_plan.py`). Rules:

- Priority classes are served strictly in order (`Priority.INTERACTIVE` < `AGENT` < `BATCH`), first come,
  first served within a class. A swapped-out (preempted) request comes back before new work of its own
  class (BATON §4.3 preemptive scheduling; vLLM's `--scheduling-policy priority` orders the same way).
- When the head of the queue cannot be admitted (batch at `max_batch_size`, or its K/V would not fit the
  KV budget) and a running row has a strictly lower priority, the lowest-priority, most recently started row
  is preempted (swapped out to host memory). A row preempted `max_preemptions` times is not chosen again,
  so background work always finishes (bounded starvation).
- Each iteration admits prompts up to a prefill token budget; a prompt longer than what is left of it is
  prefilled in chunks over several iterations (chunked prefill), so decoding rows wait for at most one
  budget's worth of prompt tokens per step. Newcomers of one class admitted together share one packed
  prefill; a higher class never waits for a lower one's prompts.
- Memory (`kv_budget.py`): new work is admitted while the padded window after the insert stays under the low
  watermark of the budget; before a decode step, rows are swapped out (lowest priority first), or a long
  prompt's K/V held between chunks dropped, while the window would exceed the high watermark.
- Interactive latency target (`BatchSnapshot.interactive_tpot_slo`, `sched_slo.py`): while a chat decodes,
  background rows over the cap the step cost model allows are swapped out (not counted as preemptions) and
  background work joins an iteration only within the target.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Sequence

from .kv_budget import MemoryView
from .request import Request
from .sched_input import MIN_CHUNK_TOKENS, BatchSnapshot, RowLike
from .sched_output import SchedulerOutput
from .sched_plan import Planner

class Scheduler:
    """The waiting queue (new, swapped-out and part-prefilled requests), the preemption policy, and the plan
    of each iteration (`schedule`).

    Args:
        max_preemptions: times one request may be preempted before it is left to finish.
    """

    def __init__(self, max_preemptions: int = 3) -> None:
        self.max_preemptions = max_preemptions
        self._heap: list[tuple[int, int, int, Request]] = []
        self._counter = itertools.count()
        self._waiting: dict[str, Request] = {}
        self.last_chat: tuple[int, int] | None = None  # (rows, longest; rows, tokens) of the last chat planned for

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, req: Request) -> bool:
        """Is `req` waiting in the queue?"""
        return self._waiting.get(req.request_id) is req

    # ------------------------------------------------------------------------------------- the plan
    def schedule(self, batch: BatchSnapshot) -> SchedulerOutput:
        """Plan one iteration: which queued requests to swap in, which new prompts to prefill together, which
        long prompt gets a chunk of how many tokens, which rows to preempt for them, and what to free under
        memory pressure (BATON §4.3). Changes nothing: the engine core executes the plan.

        Args:
            batch: the running batch and the budgets, as they are now.
        Returns:
            the plan (`SchedulerOutput`), its steps in execution order.
        Raises:
            AssertionError: the plan breaks one of its invariants (a scheduler bug; vLLM's habit).
        """
        plan = Planner(self, batch).plan()
        self._follow_target(plan)
        return plan

    def _follow_target(self, plan: SchedulerOutput) -> None:
        """Remember the last chat a plan saw decoding: between chats, background prefill forwards are bounded
        by its allowance (`sched_slo.py`)."""
        if plan.chat is not None:
            self.last_chat = plan.chat

    def memory_view(self, batch: BatchSnapshot, admitting: Request | None = None) -> MemoryView:
        """The batch's KV memory as admission sees it now: the window, and under a fixed budget the K/V that
        queued long prompts hold between prefill chunks (except `admitting`'s own, which its new row
        replaces)."""
        own = admitting.held_prefill_tokens if admitting is not None else 0
        held = self.prefilled_tokens() - own if batch.budget_is_fixed else 0
        return batch.memory_view(len(batch.rows), batch.seq_len, held)

    # ------------------------------------------------------------------------------------ the queue
    def add(self, req: Request) -> None:
        """Queue a new request (its `seq` is set to its arrival order)."""
        req.seq = next(self._counter)
        self._push(req)

    def requeue(self, req: Request) -> None:
        """Queue a request that was already admitted once (preempted and swapped out, or between two chunks
        of its prefill); it keeps its arrival order and goes before new work of its class."""
        self._push(req)

    @staticmethod
    def order_key(priority: int, started: bool, seq: int) -> tuple[int, int, int]:
        """Admission order: priority class, then started work (swapped out, part-prefilled) before new, then
        arrival."""
        return int(priority), 0 if started else 1, seq

    @classmethod
    def _order(cls, req: Request) -> tuple[int, int, int]:
        return cls.order_key(req.priority, req.swapped is not None or bool(req.num_prefilled), req.seq)

    def _push(self, req: Request) -> None:
        self._waiting[req.request_id] = req
        heapq.heappush(self._heap, (*self._order(req), req))

    def remove(self, request_id: str) -> Request | None:
        """Take a waiting request out of the queue (cancel). Returns it, or None when it is not waiting."""
        return self._waiting.pop(request_id, None)  # its heap entry is dropped lazily by peek

    def take(self, req: Request) -> bool:
        """Take `req` out of the queue to run it (a step of a plan). Returns False when it is not waiting."""
        if req not in self:
            return False
        del self._waiting[req.request_id]
        self.peek()  # drops its heap entry when it is the head, as it is when a plan runs as planned
        return True

    def peek(self) -> Request | None:
        """The request that would be admitted next, or None."""
        while self._heap:
            req = self._heap[0][3]
            if self._waiting.get(req.request_id) is req:
                return req
            heapq.heappop(self._heap)
        return None

    def head(self, n: int) -> list[Request]:
        """The first `n` waiting requests in admission order (without taking them)."""
        valid = (e for e in self._heap if self._waiting.get(e[3].request_id) is e[3])
        out: dict[str, Request] = {}
        for entry in heapq.nsmallest(2 * n, valid):  # a requeued request may have two entries
            out.setdefault(entry[3].request_id, entry[3])
        return list(out.values())[:n]

    def waiting(self) -> list[Request]:
        """Waiting and swapped requests in admission order (a copy)."""
        return sorted(self._waiting.values(), key=self._order)

    # ------------------------------------------------------------------------------------- choices
    def choose_victim(self, running: Sequence[RowLike], for_priority: int | None) -> int | None:
        """The row to preempt: lowest priority, then most recently started; None when no row qualifies.

        Args:
            running: the batch's rows in row order (requests, or rows of a projected batch).
            for_priority: only rows of strictly lower priority (higher value) qualify; None: any row
                (memory pressure).
        """
        best = None
        for row, req in enumerate(running):
            if req.num_preemptions >= self.max_preemptions:
                continue
            if for_priority is not None and int(req.priority) <= for_priority:
                continue
            key = (int(req.priority), req.start_seq)
            if best is None or key > best[0]:
                best = (key, row)
        return None if best is None else best[1]

    def prefilled_tokens(self) -> int:
        """Prompt tokens already prefilled by queued requests between prefill chunks (their K/V are held)."""
        return sum(r.held_prefill_tokens for r in self._waiting.values())

    def choose_prefill_to_drop(self) -> Request | None:
        """The queued request between prefill chunks whose held K/V go first under memory pressure: lowest
        priority, then latest arrival; None when no request holds any."""
        holders = [r for r in self._waiting.values() if r.held_prefill_tokens]
        return max(holders, key=self.drop_key, default=None)

    @staticmethod
    def drop_key(req: Request) -> tuple[int, int]:
        """Which held partial prefill goes first under memory pressure: the largest key (lowest priority,
        then latest arrival)."""
        return int(req.priority), req.seq
