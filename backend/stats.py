"""Engine statistics: immutable snapshots published by the engine thread, safe to read from any thread."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RowStats:
    """One request as the engine sees it.

    Attributes:
        request_id, priority (`interactive`/`agent`/`batch`), state (`running`, `waiting`, `swapped`, `prefilling`),
        context_len (prompt + generated tokens), generated (output tokens so far).
    """

    request_id: str
    priority: str
    state: str
    context_len: int
    generated: int


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine.

    Attributes:
        rows: the running batch, in row order.
        waiting: queued requests in admission order.
        kv_cache_bytes: bytes allocated for the batch's K/V buffers (bytes).
        kv_used_bytes: bytes of K/V holding live tokens (bytes).
        kv_window_bytes: bytes of the padded `[B, S]` window a decode step reads (bytes).
        kv_budget_bytes: the budget the window is kept under (bytes; see `EngineConfig.kv_budget_bytes`).
        swapped_bytes: K/V of preempted requests held in host memory, or parked in place in the batch (bytes).
        prefill_cache_bytes: K/V held on the device by long prompts between prefill chunks (bytes).
        padding_fraction: share of the batch's `[B, S]` cache window that is padding.
        seq_len: the batch's cache window length S (tokens).
        num_decode_steps: decode steps run since start.
        decode_steps_per_s, output_tokens_per_s: over the last few seconds (1/s, tokens/s).
        mean_decode_step_ms, mean_prefill_ms: over the last few seconds (ms).
        counters: `num_*` totals (requests received/finished/cancelled/failed, prefills (requests prefilled),
            prefill forwards (one per packed group of newcomers or prefill chunk), prefill chunks (chunked
            prefill of long prompts), prefill restarts (partial K/V of a long prompt dropped under memory
            pressure), prompt tokens,
            generated tokens, inserts, removes, preemptions, swap-outs, swap-ins, swapped-out bytes),
            `peak_kv_window_bytes`, `peak_kv_bytes` (window plus prefill caches, the total kept under a
            fixed budget), and cumulative seconds: `prefill_seconds`, `decode_seconds`,
            `decode_row_seconds` (step time x rows) and `idle_row_seconds` (prefill time x rows that waited
            through it: BATON's idle decode-row time; idle fraction = idle / (idle + decode_row)).
            Prefix cache (`backend.prefix_cache`, vLLM's metric meanings): `num_prefix_cache_queries` (prompt
            tokens looked up, once per request), `num_prefix_cache_hits` (of those, tokens served from the
            cache), `num_prefix_cache_hit_requests`, `num_prefix_cache_evictions` (blocks dropped),
            `num_prefix_cache_offloads` (blocks moved from the device to host memory).
            Interactive target (`EngineConfig.interactive_tpot_slo`): `num_slo_swap_outs` (background rows
            swapped out to keep it; also in `num_swap_outs`, not in `num_preemptions`), `num_parks` (of those, the ones
            parked in place on a CPU: no K/V copied out, `backend.row_parking`), `num_slo_held_back`
            (iterations in which it held background work back: a newcomer, a swap-in, prompt tokens).
            `num_aborted_forwards`: background forwards (decode steps, prefills) stopped between two decoder
            layers because an interactive request arrived (`backend.step_abort`; their work is redone).
        prefix_cache_bytes, prefix_cache_host_bytes: K/V the prefix cache holds on the device and in host
            memory (bytes); prefix_cache_capacity_bytes: its bound, both tiers (bytes; 0: the cache is off).
        slo_background_cap: the most background rows the interactive target lets the batch carry now
            (rows; None: no cap: no target, no chat decoding, or the cost model not ready yet).
        slo_target_step_ms: the step time the target keeps while a chat decodes (ms; None: none now).
        slo_forward_ms: while the target is set and no chat decodes, the most one background prefill forward
            is predicted to take (ms; an arriving chat stops it at a decoder layer; None: no bound now;
            `sched_slo.py`).
        predicted_step_ms: the cost model's prediction for a decode step of the batch as it is (ms; None:
            empty batch, or the model not ready).
        step_cost_coefficients: the learned decode step model (a ms, b ms/row, c ms/(row x 1000 tokens)) of
            `a + b*B + c*B*S` (`backend.step_cost`); None before it is ready.
        device, model: what the engine runs on.
    """

    rows: tuple[RowStats, ...] = ()
    waiting: tuple[RowStats, ...] = ()
    kv_cache_bytes: int = 0
    kv_used_bytes: int = 0
    kv_window_bytes: int = 0
    kv_budget_bytes: int = 0
    swapped_bytes: int = 0
    prefill_cache_bytes: int = 0
    padding_fraction: float = 0.0
    seq_len: int = 0
    num_decode_steps: int = 0
    decode_steps_per_s: float = 0.0
    output_tokens_per_s: float = 0.0
    mean_decode_step_ms: float = 0.0
    mean_prefill_ms: float = 0.0
    counters: dict = field(default_factory=dict)
    prefix_cache_bytes: int = 0
    prefix_cache_host_bytes: int = 0
    prefix_cache_capacity_bytes: int = 0
    slo_background_cap: int | None = None
    slo_target_step_ms: float | None = None
    slo_forward_ms: float | None = None
    predicted_step_ms: float | None = None
    step_cost_coefficients: tuple[float, float, float] | None = None
    device: str = ""
    model: str = ""

    @property
    def prefix_cache_hit_rate(self) -> float:
        """Share of looked-up prompt tokens served from the prefix cache, since start (0.0 with no lookup)."""
        queries = self.counters.get("num_prefix_cache_queries", 0)
        return self.counters.get("num_prefix_cache_hits", 0) / queries if queries else 0.0

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    @property
    def queue_depth(self) -> int:
        """Requests waiting to be admitted (new ones, swapped-out ones, long prompts between prefill chunks)."""
        return len(self.waiting)

    def rows_by_state(self) -> dict[str, int]:
        """Counts of requests by state: `running`, `waiting`, `swapped`, `prefilling`."""
        counts = {"running": len(self.rows), "waiting": 0, "swapped": 0, "prefilling": 0}
        for r in self.waiting:
            counts[r.state] = counts.get(r.state, 0) + 1
        return counts

    @classmethod
    def empty(cls) -> "EngineStats":
        return cls()


class StatsWindow:
    """Counters and a sliding time window of recent steps, owned by the engine thread.

    Args:
        horizon_s: length of the window for rates (s).
    """

    def __init__(self, horizon_s: float = 5.0):
        self.horizon_s = horizon_s
        self.counters: Counter = Counter()
        self._t0 = time.perf_counter()
        self._steps: deque[tuple[float, int, float]] = deque()  # (time, tokens, step seconds)
        self._prefills: deque[tuple[float, float]] = deque()  # (time, seconds)
        self._tokens: deque[tuple[float, int]] = deque()  # (time, tokens emitted)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def peak(self, name: str, value: int) -> None:
        """Keep the largest value seen under `name`."""
        self.counters[name] = max(self.counters[name], value)

    def prefill(self, prompt_tokens: int, seconds: float, rows_waiting: int = 0, requests: int = 1) -> None:
        """One prefill forward over `requests` prompts holding `prompt_tokens` in all, which took `seconds`
        while `rows_waiting` decode rows sat idle."""
        self.counters["num_prefills"] += requests
        self.counters["num_prefill_forwards"] += 1
        self.counters["num_prompt_tokens"] += prompt_tokens
        self.counters["prefill_seconds"] += seconds
        self.counters["idle_row_seconds"] += seconds * rows_waiting
        self._prefills.append((time.perf_counter(), seconds))

    def generated(self, n: int) -> None:
        self.counters["num_generated_tokens"] += n
        self._tokens.append((time.perf_counter(), n))

    def decode_step(self, rows: int, seconds: float) -> None:
        """One decode step over `rows` rows that took `seconds`."""
        self.counters["num_decode_steps"] += 1
        self.counters["decode_seconds"] += seconds
        self.counters["decode_row_seconds"] += seconds * rows
        self._steps.append((time.perf_counter(), rows, seconds))

    def snapshot(self, **fields) -> EngineStats:
        now = time.perf_counter()
        for dq in (self._steps, self._prefills, self._tokens):
            while dq and now - dq[0][0] > self.horizon_s:
                dq.popleft()
        span = max(1e-3, min(self.horizon_s, now - self._t0))
        step_ms = [s[2] * 1000 for s in self._steps]
        prefill_ms = [p[1] * 1000 for p in self._prefills]
        return EngineStats(
            num_decode_steps=self.counters["num_decode_steps"],
            decode_steps_per_s=len(self._steps) / span,
            output_tokens_per_s=sum(t[1] for t in self._tokens) / span,
            mean_decode_step_ms=sum(step_ms) / len(step_ms) if step_ms else 0.0,
            mean_prefill_ms=sum(prefill_ms) / len(prefill_ms) if prefill_ms else 0.0,
            counters=dict(self.counters),
            **fields,
        )
