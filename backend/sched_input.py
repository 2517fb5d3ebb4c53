"""The scheduler's input: `BatchSnapshot`, a model-free picture of the running batch and the engine's budgets
taken at the start of an iteration, and `RowLike`, what the preemption choice reads of a row. Pure Python, no
torch (vLLM v1 hands its scheduler the same kind of state; here it is one frozen dataclass so a test can build
it without a model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .kv_budget import MemoryView

if TYPE_CHECKING:
    from .request import Request
    from .step_cost import StepCost

MIN_CHUNK_TOKENS = 128  # a prefill chunk that only fills the rest of an iteration's budget is at least this long


@dataclass(frozen=True)
class BatchSnapshot:
    """The scheduler's input: a model-free snapshot of the running batch and the engine's budgets, taken at
    the start of an iteration (`EngineCore.snapshot`).

    Attributes:
        rows: the running requests, in row order.
        row_lengths: cached tokens of each row (tokens), in row order.
        seq_len: the batch's window length S (tokens; 0 when empty).
        bytes_per_token: K/V bytes of one token of one row, all layers (bytes).
        budget_bytes: this iteration's KV budget (bytes; None: unlimited).
        budget_is_fixed: the budget is a fixed number of bytes, so K/V that long prompts hold between prefill
            chunks count against it; False where it follows free device memory, which already excludes them.
        low_watermark, high_watermark: fractions of the budget (admit below low, swap out above high).
        max_batch_size: most rows (rows).
        max_prefill_tokens: prompt tokens prefilled per iteration (tokens).
        max_background_prefill_tokens: the same for agent and batch prompts while an interactive request is
            decoding (tokens); None: no separate budget.
        min_chunk_tokens: a chunk that only fills the rest of an iteration's budget is at least this long
            (tokens).
        next_start_seq: the admission number the next newly started row will get (preemption takes the most
            recently started row).
        interactive_tpot_slo: the interactive step target, a multiple >= 1 of what a decode step of the
            interactive rows alone costs (`EngineConfig.interactive_tpot_slo`; `sched_slo.py`); None: none.
        step_cost: the cost model the target is kept with (`step_cost.StepCost`: predicted ms of a decode
            step, a prefill, a copy); the engine passes its learned `StepCostModel`, a test a fixed one.
        row_capacity: rows the batch's KV buffers hold before they are reallocated (rows; None: not
            known, no reallocation is charged to background work).
        abort_layers: decoder layers at which a background forward stops for an arriving chat
            (`step_abort.py`; 0: its forwards cannot be stopped).

    Raises:
        ValueError: `rows` and `row_lengths` differ in length.
    """

    bytes_per_token: int
    budget_bytes: int | None
    low_watermark: float
    high_watermark: float
    max_batch_size: int
    max_prefill_tokens: int
    max_background_prefill_tokens: int | None
    rows: tuple[Request, ...] = ()
    row_lengths: tuple[int, ...] = ()
    seq_len: int = 0
    budget_is_fixed: bool = False
    min_chunk_tokens: int = MIN_CHUNK_TOKENS
    next_start_seq: int = 0
    interactive_tpot_slo: float | None = None
    step_cost: StepCost | None = None
    row_capacity: int | None = None
    abort_layers: int = 0

    def __post_init__(self) -> None:
        if len(self.rows) != len(self.row_lengths):
            raise ValueError(f"row_lengths: {len(self.row_lengths)} lengths for {len(self.rows)} rows")

    def memory_view(self, rows: int, seq_len: int, held_tokens: int) -> MemoryView:
        """The KV memory of a `[rows, seq_len]` window (rows, tokens) with `held_tokens` tokens of K/V held
        between prefill chunks (counted only under a fixed budget)."""
        held = held_tokens * self.bytes_per_token if self.budget_is_fixed else 0
        return MemoryView(rows, seq_len, self.bytes_per_token, self.budget_bytes, self.low_watermark,
                          self.high_watermark, held)


class RowLike(Protocol):
    """What the preemption choice reads of a row (a `Request`, or a row of a projected batch)."""

    priority: int
    start_seq: int
    num_preemptions: int
