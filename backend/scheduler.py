"""Who runs next: priority classes, preemption choice, and the KV memory budget.

Pure Python (no torch), so it is testable without a model (the nano-vllm habit). Rules:

- Priority classes are served strictly in order (`Priority.INTERACTIVE` < `AGENT` < `BATCH`), first come,
  first served within a class. A swapped-out (preempted) request comes back before new work of its own
  class (BATON §4.3 preemptive scheduling; vLLM's `--scheduling-policy priority` orders the same way).
- When the head of the queue cannot be admitted (batch at `max_batch_size`, or its K/V would not fit the
  KV budget) and a running row has a strictly lower priority, the lowest-priority, most recently started row
  is preempted (swapped out to host memory). A row preempted `max_preemptions` times is not chosen again,
  so background work always finishes (bounded starvation).
- Each iteration admits prompts up to a prefill token budget; a prompt longer than what is left of it is
  prefilled in chunks over several iterations (chunked prefill), so decoding rows wait for at most one
  budget's worth of prompt tokens per step.
- Memory (`kv_budget.py`): new work is admitted while the padded window after the insert stays under the low
  watermark of the budget; before a decode step, rows are swapped out (lowest priority first) while the
  window would exceed the high watermark.
"""

from __future__ import annotations

import heapq
import itertools

from .kv_budget import MemoryView  # noqa: F401 (the scheduler's view of KV memory; imported from here too)
from .request import Request


class Scheduler:
    """The waiting queue (new and swapped-out requests) and the preemption policy.

    Args:
        max_preemptions: times one request may be preempted before it is left to finish.
    """

    def __init__(self, max_preemptions: int = 3) -> None:
        self.max_preemptions = max_preemptions
        self._heap: list[tuple[int, int, int, Request]] = []
        self._counter = itertools.count()
        self._waiting: dict[str, Request] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, req: Request) -> None:
        """Queue a new request (its `seq` is set to its arrival order)."""
        req.seq = next(self._counter)
        self._push(req)

    def requeue(self, req: Request) -> None:
        """Queue a request that was already admitted once (preempted and swapped out, or between two chunks
        of its prefill); it keeps its arrival order and goes before new work of its class."""
        self._push(req)

    @staticmethod
    def _order(req: Request) -> tuple[int, int, int]:
        """Admission order: priority class, then started work (swapped out, part-prefilled) before new, then
        arrival."""
        return int(req.priority), 0 if req.swapped is not None or req.num_prefilled else 1, req.seq

    def _push(self, req: Request) -> None:
        self._waiting[req.request_id] = req
        heapq.heappush(self._heap, (*self._order(req), req))

    def remove(self, request_id: str) -> Request | None:
        """Take a waiting request out of the queue (cancel). Returns it, or None when it is not waiting."""
        return self._waiting.pop(request_id, None)  # its heap entry is dropped lazily by peek

    def peek(self) -> Request | None:
        """The request that would be admitted next, or None."""
        while self._heap:
            req = self._heap[0][3]
            if self._waiting.get(req.request_id) is req:
                return req
            heapq.heappop(self._heap)
        return None

    def pop(self) -> Request:
        """Remove and return `peek()` (which must not be None)."""
        req = self.peek()
        assert req is not None, "pop from an empty queue"
        heapq.heappop(self._heap)
        del self._waiting[req.request_id]
        return req

    def choose_victim(self, running: list[Request], for_priority: int | None) -> int | None:
        """The row to preempt: lowest priority, then most recently started; None when no row qualifies.

        Args:
            running: the batch's requests in row order.
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
        return max(holders, key=lambda r: (int(r.priority), r.seq), default=None)

    def waiting(self) -> list[Request]:
        """Waiting and swapped requests in admission order (a copy)."""
        return sorted(self._waiting.values(), key=self._order)
