"""Admission order: which waiting requests are prefilled before the next decode step.

Pure Python (no torch), so it is testable without a model. Priority classes are served strictly in order
(`Priority.INTERACTIVE` < `AGENT` < `BATCH`) and first come, first served within a class. Each iteration
admits prompts up to a prefill token budget (always at least one), which bounds how long the decoding rows
wait for newcomers' prefills (the inter-token latency they see).
"""

from __future__ import annotations

import heapq
import itertools

from .request import Request


class Scheduler:
    """The waiting queue, ordered by (priority, arrival)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Request]] = []
        self._counter = itertools.count()
        self._waiting: dict[str, Request] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, req: Request) -> None:
        """Queue a request (its `seq` is set to its arrival order)."""
        req.seq = next(self._counter)
        self._waiting[req.request_id] = req
        heapq.heappush(self._heap, (int(req.priority), req.seq, req))

    def remove(self, request_id: str) -> Request | None:
        """Take a waiting request out of the queue (cancel). Returns it, or None when it is not waiting."""
        return self._waiting.pop(request_id, None)  # its heap entry is dropped lazily by _peek

    def _peek(self) -> Request | None:
        while self._heap:
            req = self._heap[0][2]
            if self._waiting.get(req.request_id) is req:
                return req
            heapq.heappop(self._heap)
        return None

    def admit(self, free_rows: int, prefill_budget: int) -> list[Request]:
        """Pop the requests to prefill now.

        Args:
            free_rows: rows the batch can still take.
            prefill_budget: prompt tokens allowed this iteration; the first request is admitted whatever
                its length.
        Returns:
            Requests in admission order (highest priority, earliest arrival first).
        """
        admitted: list[Request] = []
        spent = 0
        while len(admitted) < free_rows:
            req = self._peek()
            if req is None or (admitted and spent + req.num_prompt_tokens > prefill_budget):
                break
            heapq.heappop(self._heap)
            del self._waiting[req.request_id]
            admitted.append(req)
            spent += req.num_prompt_tokens
        return admitted

    def waiting(self) -> list[Request]:
        """Waiting requests in admission order (a copy)."""
        return sorted(self._waiting.values(), key=lambda r: (int(r.priority), r.seq))
