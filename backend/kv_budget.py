"""The KV memory budget: what the batch's padded window costs, and the watermarks that admission and
preemption keep it under (BATON arXiv 2410.18701 §4.3; the watermarks follow vLLM's block-manager habit).

Pure Python (no torch): the scheduler plans with it, the engine core reports with it.

The padded window of a batch of B rows and S columns is `[B, S]` tokens of K/V per layer; a decode step writes
one more column, so the memory the next step touches is `[B, S + 1]`. `kv_window_bytes` is the one place
that turns rows and columns into bytes; its `decode_column` keyword names which of the two is meant.
"""

from __future__ import annotations

from dataclasses import dataclass


def kv_window_bytes(rows: int, seq_len: int, bytes_per_token: int, *, decode_column: bool) -> int:
    """Bytes of K/V in a padded window of `rows` rows by `seq_len` columns (all layers, keys and values).

    Args:
        rows: rows B.
        seq_len: window length S (tokens).
        bytes_per_token: K/V bytes of one token of one row, all layers (`RunningBatch.bytes_per_token`).
        decode_column: True counts the column the next decode step writes (`[B, S + 1]`: what the KV budget
            must hold); False the window as it is (`[B, S]`: what the stats report).
    Returns:
        bytes (int).
    """
    return rows * (seq_len + int(decode_column)) * bytes_per_token


def grown_row_capacity(capacity: int, rows: int, max_batch_size: int) -> int:
    """Rows the KV buffers are reallocated for when they must hold `rows` rows but hold `capacity`
    (`RunningBatch`): geometric, a power of two, at least double, at least 4, at most `max_batch_size`."""
    if rows <= capacity:
        return capacity
    return min(max_batch_size, max(4, 2 * capacity, 1 << (rows - 1).bit_length()))


@dataclass(frozen=True)
class MemoryView:
    """What the scheduler needs to know about the batch's KV memory (all in bytes or tokens).

    Attributes:
        rows: live rows B.
        seq_len: window length S (tokens).
        bytes_per_token: K/V bytes of one token of one row (all layers).
        budget_bytes: most bytes the window may take (None: unlimited).
        low_watermark, high_watermark: fractions of the budget (admit below low, swap out above high).
        held_bytes: K/V held outside the window that the budget must also cover: long prompts between
            prefill chunks (bytes; 0 where the budget is read from free device memory, which already
            excludes them).
    """

    rows: int
    seq_len: int
    bytes_per_token: int
    budget_bytes: int | None
    low_watermark: float
    high_watermark: float
    held_bytes: int = 0

    def window_bytes(self, rows: int, seq_len: int) -> int:
        """Bytes of a `[rows, seq_len]` window (the decode step writes one more column: counted)."""
        return kv_window_bytes(rows, seq_len, self.bytes_per_token, decode_column=True)

    def fits_after_insert(self, length: int) -> bool:
        """Would the window with one more row of `length` tokens stay under the low watermark?"""
        if self.budget_bytes is None:
            return True
        after = self.window_bytes(self.rows + 1, max(self.seq_len, length)) + self.held_bytes
        return self.rows == 0 or after <= self.low_watermark * self.budget_bytes

    def over_high_watermark(self) -> bool:
        """Would the next decode step's window, with the K/V held outside it, exceed the high watermark?
        Never with a single consumer of memory (one row, or no row at all), which could only make room
        by giving up all its work."""
        if self.budget_bytes is None or self.rows == 0 or (self.rows == 1 and not self.held_bytes):
            return False
        return self.window_bytes(self.rows, self.seq_len) + self.held_bytes > self.high_watermark * self.budget_bytes
