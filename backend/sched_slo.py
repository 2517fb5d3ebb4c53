"""The interactive latency target as one iteration's plan spends it (`EngineConfig.interactive_tpot_slo`).

While an interactive request is decoding (a running row, a row admitted in this plan, or queued to be
admitted), background (agent, batch) work is limited so that an iteration holds the interactive rows for at
most `multiple` times what a decode step of the interactive rows alone would cost (ms, predicted by the
`StepCost` model of `step_cost.py`):

- **Rows.** The background rows in the batch are at most the cap: the largest n with
  `decode_ms(B_i + n, S) <= multiple * decode_ms(B_i, S_i)` (B_i interactive rows, at least 1; S_i their
  longest row; S the window with the background rows, tokens). Rows over it are swapped out (BATON §4.3,
  exactly: their K/V go to host memory and come back unchanged), lowest priority and most recently started
  first, so the oldest background rows keep the slots and the rest come back in their start order. A chat
  that needs a row takes one of these (not a counted preemption); the others go after its prefill, so its
  first token does not wait for them.
- **Work.** Background newcomers are admitted only while the iteration's decode step with them, plus the
  background work planned so far in this iteration (prefill forwards, swap-in copies, and a reallocation of
  the KV buffers when a new row passes their row capacity), stays within the same target. A long
  background prompt is then chunked to the tokens that fit (Sarathi-Serve's budget, Agrawal et al. 2024).
- **Between chats.** While no chat decodes, background work runs at full speed (the whole
  `max_prefill_tokens`, swap-ins at once, no row cap), but no background prefill forward is predicted to
  take longer than `layers x allowance` (ms), the allowance being what the target lets a step of the last chat
  exceed its chat-alone cost (`(multiple - 1) x decode_ms`): a chat that arrives stops the forward in flight at
  its next decoder layer (`step_abort.py`), so it waits at most about one allowance, and the work it throws away
  is at most one forward. Longer prompts are chunked, further prompts go in further forwards of the same
  iteration (the core stops between them for a chat). Without abortable layers the bound is one allowance.
  This replaced a per-iteration pace after each chat (the last chat's target of background prefill per
  iteration, until a plan held nothing back), which slowed the job while it lasted and bounded nothing once it
  ended: a background forward could again be `max_prefill_tokens` long (2,048 tokens, ~9 s on one thread of
  a 2-core CPU, ~300 ms a decoder layer) for a chat to wait on and throw away. One-token chats every 2-6 s
  beside a joining job (`benchmarks/chat_arrival.py`, one session): the job prefilled 11% more prompt tokens,
  the chats' TTFT median / p90 / max 160 / 219 / 282 ms against 140 / 163 / 299 ms (a chat now waits up to
  one allowance, ~40 ms here, where a paced forward's layer was ~4 ms; `docs/benchmarks.md`).
- **Hysteresis.** Admission uses a slightly stricter cap (`multiple` lowered by `ADMIT_MARGIN` of its
  allowance) than the swap-out (the full `multiple`), so noise in the learned costs does not swap the same
  row out and in step after step.

Approximations: the SLO swap-outs themselves are not bounded (they happen once, when a chat starts, and
make every following step cheaper); relayouts of the window's columns (rare: geometric slack) and the
interactive requests' own prefills are not charged to background work. Not counted toward `max_preemptions`:
an SLO swap-out never starves a row (it comes back as soon as no chat decodes, in start order), and counting
it would turn the target off after a few chat turns.

Pure Python (no torch). vLLM's priority scheduling preempts by priority for admission only; this adds the
TPOT target of Sarathi-Serve (OSDI 2024) to BATON's preemptive scheduling.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Iterable

from .config import Priority
from .kv_budget import grown_row_capacity

if TYPE_CHECKING:
    from .request import Request
    from .sched_input import BatchSnapshot
    from .step_cost import StepCost

ADMIT_MARGIN = 0.1  # admission leaves this share of the target's allowance unused (hysteresis)


class SloAccount:
    """One plan's interactive step target: the background row cap, and the background work spent so far.

    Args:
        batch: the snapshot (`interactive_tpot_slo`, `step_cost`, `row_capacity`, `bytes_per_token`,
            `max_batch_size`).

    Attributes:
        enabled: a target is set and a cost model given.
        prefill_tokens, prefill_forwards, copy_bytes: background work planned so far (tokens, forwards, bytes).
        held_back: background work was held back by the target in this plan.
    """

    def __init__(self, batch: BatchSnapshot):
        self.multiple = batch.interactive_tpot_slo
        self.cost: StepCost | None = batch.step_cost
        self.enabled = self.multiple is not None and self.cost is not None
        self.bytes_per_token, self.max_batch_size = batch.bytes_per_token, batch.max_batch_size
        self.row_capacity = batch.row_capacity
        self.prefill_tokens = self.prefill_forwards = self.copy_bytes = 0
        self.held_back = False

    # ----------------------------------------------------------------------------------- targets
    @staticmethod
    def interactive(rows: Iterable[tuple[int, int]]) -> tuple[int, int]:
        """(interactive rows, their longest length) of (priority, length) pairs (rows, tokens)."""
        lengths = [n for p, n in rows if p == Priority.INTERACTIVE]
        return len(lengths), max(lengths, default=0)

    def target_ms(self, b_i: int, s_i: int) -> float | None:
        """The most an iteration may hold `b_i` interactive rows of up to `s_i` tokens (ms); None: no target
        (none set, or the model cannot predict yet)."""
        base = self.cost.decode_ms(max(1, b_i), s_i) if self.enabled else None
        return None if base is None else self.multiple * base

    def cap(self, b_i: int, s_i: int, seq_len: int, admit: bool = False) -> int | None:
        """The most background rows a decode step may carry beside `b_i` interactive rows of up to `s_i`
        tokens in a `seq_len`-column window (rows); None: no cap. `admit` uses the stricter admission cap."""
        target = self.target_ms(b_i, s_i)
        if target is None:
            return None
        if admit:
            base = target / self.multiple
            target = base + (target - base) * (1 - ADMIT_MARGIN)
        b_i, n = max(1, b_i), 0
        while b_i + n < self.max_batch_size and (self.cost.decode_ms(b_i + n + 1, seq_len) or 0.0) <= target:
            n += 1
        return n

    # -------------------------------------------------------------------------------------- work
    def work_ms(self, tokens: int = 0, new_forward: bool = False, nbytes: int = 0) -> float:
        """Background work planned so far plus `tokens` more prompt tokens (in a new forward or not) and
        `nbytes` more copied (ms; what the model cannot predict yet counts 0)."""
        prefill = self.cost.prefill_ms(self.prefill_tokens + tokens, self.prefill_forwards + int(new_forward))
        copy = self.cost.copy_ms(self.copy_bytes + nbytes)
        return (prefill or 0.0) + (copy or 0.0)

    def relayout_bytes(self, rows: int, seq_len: int) -> int:
        """Bytes written when the batch grows to `rows` rows of a `seq_len`-column window: the reallocated
        buffers' window (0 within the row capacity; bytes)."""
        if self.row_capacity is None or rows <= self.row_capacity:
            return 0
        return grown_row_capacity(self.row_capacity, rows, self.max_batch_size) * seq_len * self.bytes_per_token

    def tokens_left(self, decode_ms: float, target: float, limit: int) -> int:
        """Most background prompt tokens (up to `limit`) a new forward may prefill in an iteration whose
        decode step costs `decode_ms`, within `target` (ms). Binary search: prefill cost grows with tokens."""
        if self.work_ms(0, True) + decode_ms > target:
            return 0
        lo, hi = 0, limit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.work_ms(mid, True) + decode_ms <= target:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def forward_tokens(self, bound_ms: float, held: int, limit: int) -> int:
        """Most prompt tokens (up to `limit`) one prefill forward already holding `held` tokens may add within
        `bound_ms` (ms; binary search, the cost grows with tokens; what the model cannot predict counts 0)."""
        lo, hi = 0, limit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if (self.cost.prefill_ms(held + mid, 1) or 0.0) <= bound_ms:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def charge(self, tokens: int, new_forward: bool, nbytes: int, rows: int) -> None:
        """Count admitted background work: prompt tokens, a new prefill forward, bytes copied, and the batch
        grown to `rows` rows (its buffers reallocated when that passes their row capacity)."""
        self.prefill_tokens += tokens
        self.prefill_forwards += int(new_forward)
        self.copy_bytes += nbytes
        if self.row_capacity is not None and rows > self.row_capacity:
            self.row_capacity = grown_row_capacity(self.row_capacity, rows, self.max_batch_size)


class SloPlanning:
    """The planner's side of the target (`sched_plan.Planner` inherits it): the SLO swap-outs, and the checks
    its admission loop makes for background work. Reads the planner's projection: `rows` (with `priority`,
    `length`, `start_seq`), the open `group`, the `queue` view, `seq_len`, `batch`, `slo` (a `SloAccount`),
    and calls its `_preempt`."""

    rows: list[Any]
    group: list[Request]
    queue: Any
    seq_len: int
    batch: BatchSnapshot
    slo: SloAccount
    cap: int | None
    target_ms: float | None
    last_chat: tuple[int, int] | None

    def _preempt(self, index: int, for_request: Request | None, slo: bool = False) -> None: ...

    def _interactive(self) -> tuple[int, int] | None:
        """(interactive rows, their longest; rows, tokens) while an interactive request decodes or is about to:
        a row of the projection, in the open group, or at the head of the queue; None otherwise."""
        pairs = [(r.priority, r.length) for r in self.rows] + [(r.priority, r.num_prompt_tokens) for r in self.group]
        b_i, s_i = SloAccount.interactive(pairs)
        head = self.queue.peek()
        if head is not None and head.request.priority == Priority.INTERACTIVE:
            return b_i, max(s_i, head.swapped_length or head.request.num_prompt_tokens)
        return (b_i, s_i) if b_i else None

    def _over_cap(self) -> int | None:
        """The background row the target swaps out next (lowest priority, most recently started), or None
        while the background rows are within the cap (or nothing is capped). Sets `cap` and `target_ms`."""
        self.cap = self.target_ms = None
        chat = self._interactive() if self.slo.enabled else None
        if chat is None:
            return None
        self.target_ms, self.cap = self.slo.target_ms(*chat), self.slo.cap(*chat, self.seq_len)
        background = [i for i, r in enumerate(self.rows) if r.priority != Priority.INTERACTIVE]
        if self.cap is None or len(background) <= self.cap:
            return None
        return max(background, key=lambda i: (int(self.rows[i].priority), self.rows[i].start_seq))

    def keep_slo_target(self) -> None:
        """While a chat decodes, swap out background rows over the target's cap, lowest priority and most
        recently started first; they come back when no chat decodes."""
        while (victim := self._over_cap()) is not None:
            self._preempt(victim, for_request=None, slo=True)

    def _slo_victim(self, req: Request) -> int | None:
        """For an interactive `req` that does not fit: a background row over the target's cap (the SLO swaps
        it out anyway, so making room with it is not a counted preemption), or None."""
        return self._over_cap() if req.priority == Priority.INTERACTIVE else None

    def _background_window(self, length: int) -> tuple[int, int]:
        """(background rows, window length) of the projection with the open group and a new row of `length`
        tokens (rows, tokens)."""
        rows = sum(r.priority != Priority.INTERACTIVE for r in itertools.chain(self.rows, self.group))
        return rows, max([self.seq_len, length, *(r.num_prompt_tokens for r in self.group)])

    def _forward_ms(self) -> float | None:
        """While the target is set and no chat decodes, the most one background prefill forward may be
        predicted to take (ms): `abort_layers` (at least 1) times the allowance of the last chat (1 row of no
        context before the first). None: no bound (no target, a chat decoding, or no cost model yet)."""
        if not self.slo.enabled or self._interactive() is not None:
            return None
        b_i, s_i = self.last_chat or (1, 0)
        base = self.slo.cost.decode_ms(max(1, b_i), s_i)
        if base is None:
            return None
        return max(1, self.batch.abort_layers) * (self.slo.multiple - 1) * base

    def _open_forward_tokens(self) -> int:
        """Prompt tokens of the open group: the forward a whole prompt admitted now joins (tokens)."""
        return sum(r.num_prompt_tokens for r in self.group)

    def _new_forward(self, take: int) -> bool:
        """Does a whole prompt of `take` tokens admitted now start a new forward (the open group closed
        first) because the group with it would pass the forward bound between chats?"""
        bound = self._forward_ms()
        if bound is None or not self.group:
            return False
        return (self.slo.cost.prefill_ms(self._open_forward_tokens() + take, 1) or 0.0) > bound

    def _slo_tokens(self, req: Request, remaining: int) -> int | None:
        """Prompt tokens of background `req` that fit this iteration beside a decoding chat: its decode step
        with one more row plus the background work so far stays within the target (tokens). Between chats:
        what fits one forward within the bound (`_forward_ms`; the open group's forward, else a new one of at
        least `min_chunk_tokens`). `remaining`: its prompt tokens not prefilled yet (tokens). None: no bound."""
        bound = self._forward_ms()
        if bound is not None:
            if remaining <= self.slo.forward_tokens(bound, self._open_forward_tokens(), remaining):
                return remaining  # joins the open forward (or starts one)
            return max(self.slo.forward_tokens(bound, 0, remaining), min(self.batch.min_chunk_tokens, remaining))
        chat = self._interactive() if self.slo.enabled else None
        target = self.slo.target_ms(*chat) if chat is not None else None
        if target is None:
            return None
        rows, seq_len = self._background_window(req.num_prompt_tokens)
        decode = self.slo.cost.decode_ms(max(1, chat[0]) + rows + 1, seq_len) or 0.0
        return self.slo.tokens_left(decode, target, remaining)

    def _slo_work(self, queued: Any, length: int, take: int) -> tuple[int, bool, int, int] | None:
        """May background `queued` (a swap-in, or `take` prompt tokens of `length`) join this plan beside a
        decoding chat: a new row within the admission cap, and the decode step plus the background work
        (prefills, swap-in copies, a reallocation of the buffers) within the target? Returns the work to
        `SloAccount.charge` once it is admitted (empty when nothing is capped: no chat decodes), or None when
        it must wait."""
        chat = self._interactive() if self.slo.enabled else None
        target = self.slo.target_ms(*chat) if chat is not None else None
        if target is None:
            return ()
        swap_in = queued.swapped_length is not None
        joins = swap_in or queued.num_prefilled + take == length  # a new row after this step
        rows, seq_len = self._background_window(length if joins else 0)
        rows += int(joins)
        if joins and rows > self.slo.cap(*chat, seq_len, admit=True):
            return None
        new_forward = take > 0 and not (take == length and self.group)  # a whole prompt joins an open group
        total_rows = len(self.rows) + len(self.group) + int(joins)
        nbytes = (length * self.batch.bytes_per_token if swap_in else 0) + self.slo.relayout_bytes(total_rows, seq_len)
        work = self.slo.work_ms(take, new_forward, nbytes)
        decode = self.slo.cost.decode_ms(max(1, chat[0]) + rows, seq_len) or 0.0
        if decode + work > target:
            return None
        return take, new_forward, nbytes, total_rows
