"""The running batch: one preallocated, left-padded KV cache shared by every decoding row.

BATON (Cong et al., arXiv 2410.18701) §4.1-4.2: a newcomer is prefilled alone, then its K/V are *shaped*
(left-padded to the batch's length, or the batch is left-padded to its length) and *embedded* as a new row,
so a decode step never computes over another request's prompt. This module owns that cache.

Layout (per layer, one key and one value buffer):

    k[layer]: [cap_batch, kv_heads, cap_seq, head_dim]      # preallocated capacity
                          ^ rows 0..B-1 are live  ^ columns off..off+S-1 are the window

Every live row is *right-aligned* in the window: row r holds its `length[r]` cached tokens in the last
`length[r]` columns, everything to their left is padding. Because of that the attention mask is a pure
function of the row lengths (`mask[r, c] = c >= S - length[r]`) and is built per step instead of stored.
A decode step writes the new token of every row into column `off + S` in place (no `torch.cat` of the
whole cache), trimming all-padding columns is `off += S - max(length)`, left-padding the batch for a longer
newcomer is `off -= L - S` while there is room, and removing a row moves the last row into its slot.
Capacity grows geometrically; the window is copied only when it hits an edge of the buffer, and then, when
the buffer is wide enough, moved within it (no new memory). On a CPU the buffers are allocated for all
`max_batch_size` rows at once (and as many again for parked rows, `row_parking.py`), so rows joining never
reallocate them: the memory is only address space until a row is written (the kernel backs a page on its first
write), so unused rows cost nothing.

Buffers are allocated uninitialised (zeroing is not needed, and on a 2-core CPU it was most of a relayout:
5.1 of 7.8 s to grow 16 rows of 1,100 tokens of SmolLM2-135M's fp32 K/V to 32 rows x 1,682 columns,
2.5 GB; a chat arriving then waited for all of it). Every cell a decode step reads is still finite, so the
masked columns contribute exactly 0 to attention: a row's live K/V, the step's new column (written before it is
read), and padding, which is zeroed when it enters the window: a new row's columns left of its K/V on insert,
and the columns a longer newcomer adds on the left for the rows already there. Copies (relayout, window moves,
`remove`) move only cells that were finite already.
"""

from __future__ import annotations

import itertools

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .attention import RowGroups, plan_row_groups
from .kv_budget import grown_row_capacity
from .row_kv import RowKV
from .row_parking import ParkedRow, RowParking

_SEQ_SLACK = 128  # extra columns reserved on the right when the window is relaid out (tokens)
_LEFT_SLACK = 32  # extra columns reserved on the left, for longer newcomers (tokens)
_MIN_MOVE_GAIN = 32  # an in-place move of the window must free at least this many columns (tokens)
_MAX_MOVE_CHUNKS = 8  # ... and take at most this many non-overlapping chunk copies per buffer
_ALLOCATIONS = itertools.count(1)  # numbers each allocation (or release) of any batch's buffers


class _WindowLayer(CacheLayerMixin):
    """A transformers cache layer that writes one decode token into the batch's buffer in place."""

    is_compileable = False
    is_sliding = False

    def __init__(self, batch: "RunningBatch", layer_idx: int):
        super().__init__()
        self._batch = batch
        self._layer_idx = layer_idx
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states):  # pragma: no cover - always initialised
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write `[B, kv_heads, 1, head_dim]` new K/V at column `off+S`; return `[B, kv_heads, S+1, head_dim]`."""
        return self._batch._write_step(self._layer_idx, key_states, value_states)

    def get_seq_length(self) -> int:
        return self._batch.seq_len

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._batch.seq_len + query_length, 0

    def get_max_length(self) -> int:
        return -1


class RunningBatch(RowParking):
    """Per-layer K/V of all decoding rows, with insert (vector shaping + KV embedding), remove and trim.

    Only the engine thread touches an instance. Row indices are dense (`0..size-1`); `remove` moves the last
    row into the freed slot and returns the old index of the moved row so the caller can follow it.

    Args:
        num_layers: decoder layers of the model.
        kv_heads: key/value heads per layer.
        head_dim: size of one head (elements).
        dtype, device: of the K/V buffers (the model's).
        max_batch_size: most rows (capacity never exceeds it).
        width_quantum: a reallocation rounds the buffers' columns (`cap_seq`) up to a multiple of this (tokens):
            the compiled decode modes attend over the whole width, so fewer distinct widths mean fewer graphs
            (`backend/static_step.py`); 1 (the window path) rounds nothing.
        zero_fill: allocate zeroed buffers: the static step reads every column of its bucket's rows, padding
            rows and columns outside the window included, so every cell must be finite from the start (the
            window path reads only cells it zeroed or wrote, and allocates uninitialised buffers).
    """

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, max_batch_size: int, width_quantum: int = 1, zero_fill: bool = False):
        self.num_layers, self.kv_heads, self.head_dim = num_layers, kv_heads, head_dim
        self.dtype, self.device, self.max_batch_size = dtype, torch.device(device), max_batch_size
        self.width_quantum, self.zero_fill = width_quantum, zero_fill
        self.bytes_per_token = 2 * num_layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
        self.num_relayouts = 0  # buffer reallocations and in-place window moves so far (copies of the window)
        self.num_spills = 0  # parked rows copied out of the buffers to free their buffer row (`row_parking.py`)
        self._lazy_rows = self.device.type == "cpu"  # all rows at once: untouched pages hold no memory
        self._release()
        self._cache = Cache(layers=[_WindowLayer(self, i) for i in range(num_layers)])

    # ----------------------------------------------------------------------------------------- state
    def _release(self) -> None:
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.allocation = next(_ALLOCATIONS)  # changes whenever the buffers are reallocated or released
        self.cap_batch = 0
        self.cap_seq = 0
        self._rows_written = 0  # rows of the buffers that ever held K/V since they were allocated
        self.off = 0  # first window column in the buffers
        self.seq_len = 0  # S: window length (columns), == max(lengths) after trim
        self.lengths: list[int] = []  # cached tokens per live row
        self._lengths_t = torch.zeros(0, dtype=torch.long, device=self.device)
        self.parked: list[ParkedRow] = []  # rows paused in place, in buffer rows >= size (`row_parking.py`)

    @property
    def size(self) -> int:
        """Live rows (B)."""
        return len(self.lengths)

    @property
    def capacity_bytes(self) -> int:
        """Bytes of memory the K/V buffers hold (capacity, not just live tokens): on a CPU only the rows that
        were ever written (the others are address space)."""
        rows = self._rows_written if self._lazy_rows else self.cap_batch
        return rows * self.cap_seq * self.bytes_per_token

    @property
    def used_bytes(self) -> int:
        """Bytes of K/V that belong to live tokens (padding excluded)."""
        return sum(self.lengths) * self.bytes_per_token

    @property
    def padding_fraction(self) -> float:
        """Share of the window `[B, S]` that is padding (0.0 when empty)."""
        cells = self.size * self.seq_len
        return 0.0 if cells == 0 else 1.0 - sum(self.lengths) / cells

    # ------------------------------------------------------------------------------------- layout
    def _relayout(self, cap_batch: int, left: int, right: int) -> None:
        """Reallocate buffers with `cap_batch` rows, `left` free columns before the window and `right` after.

        Copies the live window `[B, kv_heads, S, head_dim]` once per layer.
        """
        self.num_relayouts += 1
        new_off = left
        cap_seq = -(-(new_off + self.seq_len + right) // self.width_quantum) * self.width_quantum
        cap_seq = max(cap_seq, *(p.length for p in self.parked), 0)  # parked rows move with the buffers
        B, S = self.size, self.seq_len
        shape = (cap_batch, self.kv_heads, cap_seq, self.head_dim)  # [B, H, T, D]
        new_k, new_v = [], []
        for layer in range(self.num_layers):
            for old, new in ((self.k, new_k), (self.v, new_v)):
                alloc = torch.zeros if self.zero_fill else torch.empty  # uninitialised: see the module doc
                buf = alloc(shape, dtype=self.dtype, device=self.device)
                if B and S:
                    buf[:B, :, new_off:new_off + S] = old[layer][:B, :, self.off:self.off + S]
                for p in self.parked:  # each at the start of its buffer row
                    buf[p.index, :, :p.length] = old[layer][p.index, :, p.start:p.start + p.length]
                new.append(buf)
        self.k, self.v = new_k, new_v
        self.allocation = next(_ALLOCATIONS)
        self.cap_batch, self.cap_seq, self.off, self._rows_written = cap_batch, cap_seq, new_off, self._rows_in_use()
        for p in self.parked:
            p.start = 0

    def _move_window(self, new_off: int) -> None:
        """Move the live window `[B, kv_heads, S, head_dim]` to start at column `new_off` of the same buffers.

        The shift is done in chunks no wider than the shift distance, ordered so that no chunk's source and
        destination overlap (columns left behind keep stale, finite K/V: they are padding).
        """
        d, B, S = new_off - self.off, self.size, self.seq_len
        if d == 0 or not B or not S:
            self.off = new_off
            return
        self.num_relayouts += 1
        step = abs(d)
        starts = list(range(0, S, step))
        if d > 0:
            starts.reverse()
        for bufs in (self.k, self.v):
            for buf in bufs:
                for c in starts:
                    n = min(step, S - c)
                    buf[:B, :, new_off + c:new_off + c + n] = buf[:B, :, self.off + c:self.off + c + n]
        self.off = new_off

    def _ensure(self, rows: int, left: int, right: int = 1) -> None:
        """Make the buffers hold `rows` rows with `left` free columns before the window and `right` after it.

        In order of preference: nothing to do; move the window within the buffers (when that frees at least
        `_MIN_MOVE_GAIN` columns in a few chunk copies); reallocate with geometric growth (`_relayout`).
        """
        S = self.seq_len
        if rows <= self.cap_batch and left <= self.off and self.off + S + right <= self.cap_seq:
            return
        free = self.cap_seq - S
        if rows <= self.cap_batch and free - left >= right + _MIN_MOVE_GAIN:
            new_off = min(max(left, min(left + _LEFT_SLACK, free - _SEQ_SLACK)), free - right)
            if abs(new_off - self.off) * _MAX_MOVE_CHUNKS >= S:
                self._move_window(new_off)
                return
        if self._lazy_rows:  # every row at once; where rows can be parked, as many again for them
            cap_batch = self.max_batch_size * (2 if self.can_park else 1)
        else:
            cap_batch = grown_row_capacity(self.cap_batch, rows, self.max_batch_size)
        self._relayout(cap_batch, left + _LEFT_SLACK, max(right, _SEQ_SLACK, (S + left) // 2))

    def reserve(self, rows: int, max_length: int) -> None:
        """Make room for `rows` more rows of up to `max_length` tokens at once, so that the `insert`s that
        follow copy only their own K/V (one relayout per admitted group instead of up to one per newcomer).

        Args:
            rows: rows about to be inserted (capped at `max_batch_size`).
            max_length: the longest of their K/V (tokens).
        """
        rows = min(self.size + rows, self.max_batch_size)
        self._ensure(rows, max(0, max_length - self.seq_len))

    def make_room_for_step(self, rows: int) -> None:
        """Make the buffers hold `rows` rows (>= `size`: a static step's padded row bucket) and the column the
        next decode step writes (`off + S`)."""
        self._ensure(max(rows, self.size), 0)

    @property
    def lengths_tensor(self) -> torch.Tensor:
        """The live rows' cached tokens, `[B]` long on the batch's device (read-only: the batch owns it)."""
        return self._lengths_t

    def _sync_lengths(self) -> None:
        self._lengths_t = torch.tensor(self.lengths, dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------------------------ insert
    def insert(self, row_kv: RowKV) -> int:
        """Embed one request's K/V as a new row (BATON §4.1 vector shaping, §4.2 KV embedding).

        Args:
            row_kv: per-layer K/V `[1, kv_heads, L, head_dim]` with `L >= 1` cached tokens, on any device.

        Returns:
            The new row's index (== previous `size`).

        Raises:
            RuntimeError: when the batch already holds `max_batch_size` rows.
            ValueError: when the tensors' shapes do not match the batch.
        """
        if self.size >= self.max_batch_size:
            raise RuntimeError(f"batch is full ({self.max_batch_size} rows)")
        L = row_kv.length
        k0 = row_kv.keys[0]
        if L < 1 or len(row_kv.keys) != self.num_layers or tuple(k0.shape) != (1, self.kv_heads, L, self.head_dim):
            raise ValueError(f"row K/V must be {self.num_layers} x [1, {self.kv_heads}, L>=1, {self.head_dim}], "
                             f"got {len(row_kv.keys)} x {tuple(k0.shape)}")
        row, end = self._open_row(L)
        for bufs, src in ((self.k, row_kv.keys), (self.v, row_kv.values)):
            for buf, part in zip(bufs, src):
                buf[row, :, self.off:end - L].zero_()  # the new row's padding
                buf[row, :, end - L:end] = part[0]
        return self._close_row(row, L)

    def _open_row(self, L: int, keep: ParkedRow | None = None) -> tuple[int, int]:
        """Make room for a new row of `L` tokens: the window widened on the left when `L > S` (those columns
        zeroed in the rows already there: padding entering the window), buffer row `size` freed of any parked
        row but `keep`. Returns (the new row's index, the window's end column); its columns are the caller's to
        fill."""
        grow_left = max(0, L - self.seq_len)  # columns the window must gain on the left
        self._ensure(self.size + 1, grow_left)
        self.off -= grow_left
        self.seq_len += grow_left
        row, end = self.size, self.off + self.seq_len
        if grow_left and row:
            for buf in (*self.k, *self.v):
                buf[:row, :, self.off:self.off + grow_left].zero_()
        self._vacate(row, keep)  # a row parked in that buffer row moves to a free one
        return row, end

    def _close_row(self, row: int, L: int) -> int:
        """Count the row `_open_row` opened, now filled with `L` tokens; returns its index."""
        self._rows_written = max(self._rows_written, row + 1)
        self.lengths.append(L)
        self._sync_lengths()
        return row

    # ------------------------------------------------------------------------------------ remove
    def remove(self, row: int, keep_buffers: bool = False) -> int | None:
        """Drop a row; the last row moves into its slot. All-padding columns are trimmed afterwards.

        Args:
            row: live row index.
            keep_buffers: when the batch becomes empty, keep its buffers (more rows are about to come back:
                freeing and reallocating gigabytes of touched memory costs a CPU a tenth of a second or more).

        Returns:
            The old index of the row that moved into `row` (always `size` after the call), or None when
            `row` was the last row.

        Raises:
            IndexError: for a row that is not live.
        """
        moved = self.remove_many([row], keep_buffers)
        return next(iter(moved), None)  # the only row that can move is the last, into `row`

    def remove_many(self, rows: list[int], keep_buffers: bool = False) -> dict[int, int]:
        """Drop several rows at once, refilling the holes below the new size with the surviving rows above it
        (one copy per surviving row that moves, instead of one per removed row); then trim.

        Args:
            rows: distinct live row indices.
            keep_buffers: as in `remove`.
        Returns:
            `{old index: new index}` of the surviving rows that moved.
        Raises:
            IndexError: for a row that is not live.
        """
        return self.remove_and_park(rows, (), keep_buffers)[0]

    def remove_and_park(self, rows: list[int], park: list[int], keep_buffers: bool = False
                        ) -> tuple[dict[int, int], dict[int, "ParkedRow"]]:
        """Drop `rows` and pause `park` in place (`row_parking.py`), in one compaction: the surviving rows above
        the new size fill the holes below it; a parked row in such a hole first moves to a free buffer row (or
        trades places with the survivor), so parking copies at most two rows per survivor that moves (that row,
        and the parked row it displaces; all layers), never every parked row's K/V as a swap-out to host memory
        does.

        Args:
            rows: live row indices to drop; park: live row indices to pause (distinct from `rows`).
            keep_buffers: as in `remove` (the buffers are always kept while rows are parked).
        Returns:
            `{old index: new index}` of the surviving rows that moved, and `{old index: ParkedRow}` of the
            parked rows.
        Raises:
            IndexError: for a row that is not live.
            RuntimeError: parking on a batch that cannot park (`can_park`).
        """
        gone = set(rows) | set(park)
        for row in gone:
            if not 0 <= row < self.size:
                raise IndexError(f"row {row} is not live (batch size {self.size})")
        if park and not self.can_park:
            raise RuntimeError("this batch cannot park rows (a static decode step writes every buffer row)")
        size = self.size - len(gone)
        holes = sorted(r for r in gone if r < size)
        movers = [r for r in range(size, self.size) if r not in gone]
        end, moved = self.off + self.seq_len, {}
        handles = {r: ParkedRow(self.lengths[r], r, end - self.lengths[r], self.lengths[r] * self.bytes_per_token)
                   for r in park}
        self.parked.extend(handles.values())
        for hole, mover in zip(holes, movers):
            n = self.lengths[mover]
            parked = handles.get(hole)  # keep its K/V: in a free buffer row, or in the mover's row after it moves
            saved = self._set_aside(parked) if parked is not None else None
            self._copy_row(mover, hole, n, end, end)
            if saved is not None:
                self._put_back(parked, saved, mover)
            self.lengths[hole] = n
            moved[mover] = hole
        del self.lengths[size:]
        if not self.lengths and not self.parked and not keep_buffers:
            self._release()
            return moved, handles
        self._sync_lengths()
        self.trim()
        return moved, handles

    def release(self) -> None:
        """Free the buffers of an empty batch (kept by `remove(keep_buffers=True)`).

        Raises:
            RuntimeError: the batch still has rows.
        """
        if self.lengths or self.parked:
            raise RuntimeError(f"the batch still has {self.size} rows and {len(self.parked)} parked")
        self._release()

    def trim(self) -> int:
        """Drop leading columns that are padding in every row. Returns the number of columns dropped."""
        drop = self.seq_len - max(self.lengths, default=0)
        self.off += drop
        self.seq_len -= drop
        return drop

    def row_numel(self, length: int) -> int:
        """Elements of one row's K/V of `length` tokens, all layers, keys and values."""
        return 2 * self.num_layers * self.kv_heads * length * self.head_dim

    def extract(self, row: int, device: torch.device | str = "cpu", pin_memory: bool = False,
                into: torch.Tensor | None = None) -> RowKV:
        """Copy one row's live K/V out of the batch (swap-out); the row stays until `remove`.

        Args:
            row: live row index.
            device: where the copy goes (host memory for swap-out).
            pin_memory: allocate page-locked host memory (CUDA swap-out); with `into`, copy asynchronously.
            into: a flat buffer of at least `row_numel(length)` elements of the batch's dtype to copy into
                (swap space, reused across swap-outs); None allocates new tensors.

        Returns:
            `RowKV` with per-layer `[1, kv_heads, length, head_dim]` tensors, bit-exact copies (views of `into`
            when given, which is then its `storage`).
        Raises:
            IndexError: for a row that is not live.
            ValueError: `into` is too small.
        """
        if not 0 <= row < self.size:
            raise IndexError(f"row {row} is not live (batch size {self.size})")
        return self._copy_out(row, self.lengths[row], self.off + self.seq_len, device, pin_memory, into)

    def _copy_out(self, row: int, n: int, end: int, device: torch.device | str = "cpu", pin_memory: bool = False,
                  into: torch.Tensor | None = None) -> RowKV:
        """Copy the `n` tokens of buffer row `row` that end at column `end` out of the batch (see `extract`)."""
        per = self.kv_heads * n * self.head_dim
        if into is not None and into.numel() < 2 * self.num_layers * per:
            raise ValueError(f"into: {into.numel()} elements cannot hold {self.row_numel(n)}")
        keys, values, at = [], [], 0
        for layer in range(self.num_layers):
            for src, dst in ((self.k[layer], keys), (self.v[layer], values)):
                part = src[row:row + 1, :, end - n:end]
                if into is None:
                    out = torch.empty(part.shape, dtype=part.dtype, device=device, pin_memory=pin_memory)
                else:
                    out, at = into[at:at + per].view(part.shape), at + per
                out.copy_(part, non_blocking=pin_memory)
                dst.append(out)
        return RowKV(keys, values, n, into)

    def row_views(self, row: int) -> RowKV:
        """One row's live K/V as views into the batch's buffers (valid until the batch changes; no copy).

        Returns:
            `RowKV` with per-layer `[1, kv_heads, length, head_dim]` views.
        Raises:
            IndexError: for a row that is not live.
        """
        if not 0 <= row < self.size:
            raise IndexError(f"row {row} is not live (batch size {self.size})")
        n, end = self.lengths[row], self.off + self.seq_len
        return RowKV([k[row:row + 1, :, end - n:end] for k in self.k],
                     [v[row:row + 1, :, end - n:end] for v in self.v], n)

    # -------------------------------------------------------------------------------- decode step
    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor, Cache, RowGroups | None]:
        """Prepare one decode step over all rows.

        Returns:
            position_ids `[B, 1]` (each row's own next position: its cached length),
            attention_mask `[B, 1, 1, S+1]` bool (True = attend; padding columns False), the cache object
            to pass as `past_key_values` (it writes the step's K/V in place at column `off+S`), and the rows
            grouped by length for ragged attention (None when one attention call over the window is as cheap).
        """
        self._ensure(self.size, 0)
        S = self.seq_len
        cols = torch.arange(S + 1, device=self.device)
        mask = cols[None, :] >= (S - self._lengths_t)[:, None]  # [B, S+1]
        return self._lengths_t[:, None], mask[:, None, None, :], self._cache, plan_row_groups(self.lengths, self.device)

    def _write_step(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, col = self.size, self.off + self.seq_len
        k, v = self.k[layer], self.v[layer]
        k[:B, :, col] = key[:, :, 0]
        v[:B, :, col] = value[:, :, 0]
        return k[:B, :, self.off:col + 1], v[:B, :, self.off:col + 1]  # [B, H, S+1, D]

    def finish_step(self) -> None:
        """Account for the token every row just wrote (call after the decode forward)."""
        self.seq_len += 1
        self.lengths = [n + 1 for n in self.lengths]
        self._lengths_t += 1
