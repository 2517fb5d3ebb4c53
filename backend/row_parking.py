"""Parked rows: a running row paused in place, its K/V left in the batch's buffers (a swap-out without the copy).

The interactive latency target (`sched_slo.py`) swaps background rows out when a chat starts decoding and brings
them back when it pauses. On a CPU "host memory" is the same RAM as the batch's buffers, so swapping a row out
only copies bytes from one place in RAM to another: for 31 job rows of up to ~1,300 tokens of SmolLM2-135M
(~1.4 GB) that copy was the chat's longest inter-token gap in the TUI (ITL p99 3.1x its idle TPOT, issue #13).
A parked row instead stays where it is, in a buffer row past the decoded ones: the decode step runs over the
live rows `0..size-1` only (`[size, 1]` inputs, `k[:size]` views), so parking costs at most two row copies per
live row that must move below the new size (the survivor itself, the chat's row, a few hundred tokens; and the
parked row in the hole it fills, set aside into a free buffer row), never a copy of every parked row's K/V.
Resuming one (`unpark`) copies its K/V once, into the next live row, right-aligned again: the same bytes a
swap-in copies, and nothing is recomputed (exact, like BATON §4.3's swap).

Layout: a parked row keeps the columns it had when it was parked, `[start, start + length)` of its buffer row.
The live window moves on without it (a window move copies the live rows only, so parking never makes a move
copy more), and the window is trimmed to the live rows; only a reallocation of the buffers (rare on a CPU,
where the buffers hold every row from the start) copies parked rows, to the start of their buffer rows. A row
that needs a parked row's buffer row (an insert, an unpark) moves the parked row to a free buffer row: the
buffers hold `2 x max_batch_size` rows where rows can be parked (address space until written, like every unused
row on a CPU). When none is free, the parked row is *spilled*: copied out to host tensors (`RowKV`), as a
swap-out would have done, and comes back through `insert`.

Only where host and device memory are the same (a CPU, `can_park`), so a parked row never holds memory that a
swap-out would have freed, and only on the window path: a static decode step (`static_step.py`) writes padding
rows into buffer rows past the live ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .row_kv import RowKV


@dataclass(eq=False)
class ParkedRow:
    """One paused row's K/V, held in place in the batch's buffers (or spilled to host tensors).

    Duck-types the parts of `RowKV` that a swapped-out request's holder reads (`length`, `nbytes`, `storage`).

    Attributes:
        length: cached tokens.
        index: the buffer row holding its K/V; None once spilled or resumed.
        start: the first buffer column of its K/V (columns `start .. start + length - 1`).
        nbytes: bytes of its K/V (all layers, keys and values).
        spilled: its K/V copied out (`[1, kv_heads, length, head_dim]` per layer) when its buffer row was needed.
    """

    length: int
    index: int | None
    start: int
    nbytes: int
    spilled: "RowKV | None" = None

    @property
    def storage(self) -> torch.Tensor | None:
        """Always None: a parked row holds no swap-space buffer (a spill allocates its own tensors)."""
        return None


class RowParking:
    """`RunningBatch`'s parked rows: `park` (through `remove_and_park`), `unpark`, `spill`, `drop_parked`.

    Reads the batch's `k`, `v` (per layer `[cap_batch, kv_heads, cap_seq, head_dim]`), `off`, `lengths`,
    `cap_batch`, `parked`, `_rows_written`, and calls its `_open_row`, `_close_row`, `_copy_out` and `insert`.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    off: int
    lengths: list[int]
    cap_batch: int
    parked: list[ParkedRow]
    _rows_written: int
    _lazy_rows: bool
    zero_fill: bool
    max_batch_size: int
    num_spills: int

    @property
    def can_park(self) -> bool:
        """Rows may be parked: the buffers are in host memory (a CPU) and the decode step is the window path."""
        return self._lazy_rows and not self.zero_fill

    def _rows_in_use(self) -> int:
        """Buffer rows holding K/V: the live rows and every parked row's buffer row."""
        return max([len(self.lengths), *(p.index + 1 for p in self.parked)])

    def _copy_row(self, src: int, dst: int, n: int, src_end: int, dst_end: int) -> None:
        """Copy the `n` tokens of buffer row `src` ending at column `src_end` to row `dst`, ending at `dst_end`
        (every layer, keys and values); through a temporary copy when the two ranges overlap."""
        overlap = src == dst and src_end - n < dst_end and dst_end - n < src_end
        for buf in (*self.k, *self.v):
            part = buf[src, :, src_end - n:src_end]
            buf[dst, :, dst_end - n:dst_end] = part.clone() if overlap else part
        self._rows_written = max(self._rows_written, dst + 1)

    def _free_row(self, start: int) -> int | None:
        """The first buffer row from `start` on (and past the live rows) that holds no parked row, or None."""
        taken = {p.index for p in self.parked}
        return next((i for i in range(max(start, len(self.lengths)), self.cap_batch) if i not in taken), None)

    def _move_parked(self, handle: ParkedRow, row: int) -> None:
        """Copy a parked row's K/V to buffer row `row` (the same columns) and follow it there."""
        end = handle.start + handle.length
        self._copy_row(handle.index, row, handle.length, end, end)
        handle.index = row

    def _set_aside(self, handle: ParkedRow) -> list[torch.Tensor] | None:
        """Before a live row is copied over `handle`'s buffer row: move its K/V to a free buffer row (None), or,
        when none is free, return a copy of them (per layer, keys then values) for `_put_back`."""
        free = self._free_row(0)
        if free is not None:
            self._move_parked(handle, free)
            return None
        cols = slice(handle.start, handle.start + handle.length)
        return [buf[handle.index, :, cols].clone() for buf in (*self.k, *self.v)]

    def _put_back(self, handle: ParkedRow, saved: list[torch.Tensor], row: int) -> None:
        """Write `_set_aside`'s copy of `handle`'s K/V into buffer row `row` (now free), where it lives on."""
        for buf, part in zip((*self.k, *self.v), saved):
            buf[row, :, handle.start:handle.start + handle.length] = part
        handle.index = row
        self._rows_written = max(self._rows_written, row + 1)

    def _vacate(self, row: int, keep: ParkedRow | None = None) -> None:
        """Make buffer row `row` free for a live row: a parked row there (other than `keep`) moves to a free
        buffer row, or is spilled when none is free."""
        here = next((p for p in self.parked if p.index == row and p is not keep), None)
        if here is None:
            return
        free = self._free_row(row + 1)
        if free is None:
            self.spill(here)
        else:
            self._move_parked(here, free)

    def spill(self, handle: ParkedRow) -> None:
        """Copy a parked row's K/V out of the buffers into new host tensors (`handle.spilled`) and free its
        buffer row; `unpark` then inserts it like a swapped-in row.

        Raises:
            ValueError: `handle` is not parked in this batch.
        """
        if handle not in self.parked:
            raise ValueError("not a row parked in this batch")
        self.num_spills += 1
        handle.spilled = self._copy_out(handle.index, handle.length, handle.start + handle.length)
        self.drop_parked(handle)

    def spill_all(self) -> None:
        """Spill every parked row (before the batch is discarded: they live on as host tensors)."""
        for handle in list(self.parked):
            self.spill(handle)

    def drop_parked(self, handle: ParkedRow) -> None:
        """Forget a parked row (its request was cancelled, or it was spilled); its buffer row is free again. A
        handle that is not parked here is ignored."""
        if handle in self.parked:
            self.parked.remove(handle)
            handle.index = None

    def unpark(self, handle: ParkedRow) -> int:
        """Resume a parked row as the next live row: its K/V copied once into buffer row `size`, right-aligned
        in the window (its padding zeroed). Exact: the bytes are the ones parked.

        Args:
            handle: a row parked in this batch (or spilled from it: then it is inserted from host tensors).
        Returns:
            The new row's index (== previous `size`).
        Raises:
            ValueError: `handle` was not parked here (or was resumed already).
            RuntimeError: the batch already holds `max_batch_size` rows.
        """
        if handle.spilled is not None:
            kv, handle.spilled = handle.spilled, None
            return self.insert(kv)
        if handle not in self.parked:
            raise ValueError("not a row parked in this batch")
        if len(self.lengths) >= self.max_batch_size:
            raise RuntimeError(f"batch is full ({self.max_batch_size} rows)")
        n = handle.length
        row, end = self._open_row(n, keep=handle)  # a relayout in there carries it; it never moves or spills
        self.parked.remove(handle)
        self._copy_row(handle.index, row, n, handle.start + n, end)
        for buf in (*self.k, *self.v):
            buf[row, :, self.off:end - n].zero_()  # its padding
        handle.index = None
        return self._close_row(row, n)

    # provided by RunningBatch
    def _copy_out(self, row: int, n: int, end: int, device: torch.device | str = "cpu", pin_memory: bool = False,
                  into: torch.Tensor | None = None) -> RowKV: ...
    def _open_row(self, L: int, keep: ParkedRow | None = None) -> tuple[int, int]: ...
    def _close_row(self, row: int, L: int) -> int: ...
    def insert(self, row_kv: RowKV) -> int: ...
