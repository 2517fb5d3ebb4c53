"""A decode step whose tensors keep their shapes, strides and addresses from step to step (the static step).

The window path (`RunningBatch.step_inputs`, `_WindowLayer`) attends over `k[:B, :, off:off+S+1]`, a view whose
width and offset change at every step, insert, trim and relayout: no compiled graph or captured CUDA graph could
be replayed on it. The static step runs the same `[rows, 1]` forward on inputs that only change at bucket
boundaries and buffer reallocations, so `torch.compile` (one graph per bucket) and CUDA graphs (capture once,
replay) can reuse it (`backend/decode_compile.py`):

- **Rows are bucketed**: the B live rows run as `Bp = row_bucket(B)` rows, the next power of two (at most
  `max_batch_size`), as vLLM and SGLang pad their CUDA-graph decode batches to a list of captured batch sizes
  (vLLM `cudagraph_capture_sizes`, SGLang `cuda_graph_bs`). Rows `B..Bp-1` are padding: token 0 at position 0,
  attending only to the column the step writes (so no row is all-masked and its softmax is finite). Their
  outputs are dropped and their K/V land in buffer rows that no live row uses (stale, finite padding: an
  `insert` into such a row later writes its own columns, and every other column of it is masked).
- **Full width**: attention runs over the buffers' whole width `T = cap_seq`: per layer `k[layer][:Bp]`,
  `[Bp, kv_heads, T, head_dim]`, whose data pointer and strides change only when the buffers are reallocated
  (`RunningBatch.num_relayouts`; trims, inserts and in-place moves of the window keep them). The mask
  `[Bp, 1, 1, T]` (bool, True = attend) marks for row r the columns `off+S-length[r] .. off+S` (the new token
  included); the new token's K/V are written at the column held by a `[1]` long tensor (`off+S`;
  `k[:, :, column] = new`, an `index_put_`, as gpt-fast's static KV cache writes at `input_pos`, which
  inductor turns back into an in-place write), so the write column is an input of the graph, not a constant.
- **Static input buffers** per bucket (`StaticStep`): input ids `[Bp, 1]`, position ids `[Bp, 1]`, the mask and
  the column index; each step copies into them and runs the same callable.

Attention: the `baton` attention function's static branch (`attention.py`, `STATIC_KWARG`): one SDPA call with
the query packed by K/V head (transformers' `pack_gqa`, which transformers itself skips under dynamo and
replaces with `repeat_kv`, a copy of the whole window per layer). Cost: every step reads all `T` columns of
`Bp` rows instead of the `S+1` columns of `B` rows of the window path.

Exactness: masked columns contribute exactly 0 to attention, so a row's logits differ from the window path's
only in float summation order (greedy outputs equal solo `generate`: `tests/test_compile_modes.py`).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .batch import RunningBatch


def row_bucket(rows: int, max_batch_size: int) -> int:
    """The rows a step over `rows` live rows runs as: the next power of two, at most `max_batch_size`.

    Args:
        rows: live rows B >= 1.
        max_batch_size: the batch's most rows.
    Returns:
        Bp with B <= Bp <= max(B, max_batch_size) (int).
    """
    return max(rows, min(max_batch_size, 1 << (rows - 1).bit_length()))


class StaticLayer(CacheLayerMixin):
    """A transformers cache layer over one fixed `[Bp, kv_heads, T, head_dim]` view of a layer's K/V buffer:
    `update` writes the step's K/V at the column held by the `[1]` long tensor `column` and returns the whole
    view. Nothing in it depends on the window's offset or length, so a traced graph stays valid."""

    is_compileable = True
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, column: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.column = keys, values, column
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states):  # pragma: no cover - always initialised
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write `[Bp, kv_heads, 1, head_dim]` new K/V at column `column`; return `[Bp, kv_heads, T, head_dim]`."""
        self.keys[:, :, self.column] = key_states  # index_put_ at a tensor index, as gpt-fast's KVCache writes
        self.values[:, :, self.column] = value_states
        return self.keys, self.values

    def get_seq_length(self) -> int:  # a constant: transformers reads it only without explicit positions
        return self.keys.shape[2] - 1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[2], 0

    def get_max_length(self) -> int:
        return self.keys.shape[2]


def static_cache(keys: list[torch.Tensor], values: list[torch.Tensor], column: torch.Tensor) -> Cache:
    """A cache of `StaticLayer`s over per-layer `[Bp, kv_heads, T, head_dim]` K/V views and one column index."""
    return Cache(layers=[StaticLayer(k, v, column) for k, v in zip(keys, values)])


class StaticStep:
    """The static input buffers of one row bucket over one allocation of a batch's K/V buffers.

    Valid while the batch keeps that allocation (`matches`: `RunningBatch.allocation`); a relayout, a release or
    a new batch needs a new one. It holds no reference to the K/V buffers (`cache` makes the views per step),
    so buffers a batch gives back are freed.

    Args:
        batch: the running batch; its buffers must hold `rows` rows (`RunningBatch.make_room_for_step`).
        rows: the bucket Bp.

    Attributes:
        rows: Bp. width: T, the buffers' columns (`cap_seq`).
        input_ids: `[Bp, 1]` long. position_ids: `[Bp, 1]` long. mask: `[Bp, 1, 1, T]` bool.
        column: `[1]` long, the column the step writes (`off + S`).

    Raises:
        ValueError: the buffers hold fewer than `rows` rows.
    """

    def __init__(self, batch: RunningBatch, rows: int):
        if rows > batch.cap_batch:
            raise ValueError(f"the buffers hold {batch.cap_batch} rows, the bucket needs {rows}")
        dev = batch.device
        self.rows, self.width, self.allocation = rows, batch.cap_seq, batch.allocation
        self.input_ids = torch.zeros(rows, 1, dtype=torch.long, device=dev)
        self.position_ids = torch.zeros(rows, 1, dtype=torch.long, device=dev)
        self.mask = torch.zeros(rows, 1, 1, self.width, dtype=torch.bool, device=dev)
        self.column = torch.zeros(1, dtype=torch.long, device=dev)
        self._cols = torch.arange(self.width, device=dev)

    def matches(self, batch: RunningBatch) -> bool:
        """Was this made for `batch`'s current allocation of buffers?"""
        return batch.allocation == self.allocation

    def cache(self, batch: RunningBatch) -> Cache:
        """The `StaticLayer` cache over `k[layer][:Bp]`, `v[layer][:Bp]` (`[Bp, kv_heads, T, head_dim]` views
        whose data pointers and strides are the same at every step of this allocation)."""
        return static_cache([k[:self.rows] for k in batch.k], [v[:self.rows] for v in batch.v], self.column)

    def fill(self, batch: RunningBatch, input_ids: torch.Tensor) -> None:
        """Copy one step's inputs into the static buffers (in place: their addresses never change).

        Args:
            batch: the running batch (B <= Bp live rows, its next column `off+S` inside the buffers).
            input_ids: `[B, 1]` long, each live row's last token.
        """
        B, col = batch.size, batch.off + batch.seq_len
        lengths = batch.lengths_tensor  # [B]
        self.input_ids[:B].copy_(input_ids)
        self.input_ids[B:].zero_()
        self.position_ids[:B, 0].copy_(lengths)
        self.position_ids[B:].zero_()
        cols = self._cols
        live = (cols[None, :] >= (col - lengths)[:, None]) & (cols[None, :] <= col)  # [B, T]
        self.mask[:B, 0, 0].copy_(live)
        self.mask[B:, 0, 0].copy_((cols == col)[None, :].expand(self.rows - B, -1))
        self.column.fill_(col)
