"""The Orca baselines' KV cache: per-row, left-aligned, written in place by a multi-token forward.

Layout (per layer, one key and one value buffer):

    k[layer]: [cap_rows, kv_heads, cap_cols, head_dim]
              row r holds its `lengths[r]` cached tokens in columns 0..lengths[r]-1; the rest is padding

An iteration's forward may bring several new tokens per row (a newcomer's whole prompt, a running row's one
token). Before it, `plan_write` says where each new token's K/V goes: `(src_batch, src_pos)` of the forward's
key states -> `(row, column)` of the buffers. The transformers cache layer scatters them in place and hands
attention the `[rows, kv_heads, width, head_dim]` view, so no token's K/V is ever copied again except when a
row is removed (the last row moves into its slot) or the buffers grow. K/V computed for padding positions of a
padded forward are never stored.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class _Layer(CacheLayerMixin):
    """A transformers cache layer that scatters one forward's new K/V into the buffers."""

    is_compileable = False
    is_sliding = False

    def __init__(self, kv: "OrcaKV", layer_idx: int):
        super().__init__()
        self._kv, self._layer_idx = kv, layer_idx
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states):  # pragma: no cover - always initialised
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return self._kv.write(self._layer_idx, key_states, value_states)

    def get_seq_length(self) -> int:
        return self._kv.width

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._kv.width, 0

    def get_max_length(self) -> int:
        return -1


class OrcaKV:
    """Left-aligned per-row KV buffers that grow geometrically (rows up to `max_rows`, columns by >= 128).

    Args:
        model: the causal LM (its config gives layers, KV heads, head size; its weights the dtype).
        device: where the buffers live.
        max_rows: most rows (the batch size).
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, max_rows: int):
        cfg = model.config
        self.num_layers, self.kv_heads = cfg.num_hidden_layers, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.dtype, self.device, self.max_rows = next(model.parameters()).dtype, device, max_rows
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.cap_rows = self.cap_cols = 0
        self.lengths: list[int] = []
        self.width = 0  # key columns the current forward's attention sees
        self.peak_bytes = 0
        self._plan: tuple[torch.Tensor, ...] | None = None
        self.cache = Cache(layers=[_Layer(self, i) for i in range(self.num_layers)])

    @property
    def capacity_bytes(self) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.cap_rows * self.kv_heads * self.cap_cols * self.head_dim * elem

    @property
    def padding_fraction(self) -> float:
        """Share of the `[rows, max(lengths)]` window that is padding (0.0 when empty)."""
        cells = len(self.lengths) * max(self.lengths, default=0)
        return 0.0 if cells == 0 else 1.0 - sum(self.lengths) / cells

    def reserve(self, rows: int, cols: int) -> None:
        """Make room for `rows` rows of `cols` columns (copies the live part once when the buffers grow)."""
        if rows <= self.cap_rows and cols <= self.cap_cols:
            return
        new_rows = self.cap_rows if rows <= self.cap_rows else min(self.max_rows, max(rows, 4, 2 * self.cap_rows))
        new_cols = self.cap_cols if cols <= self.cap_cols else cols + max(128, cols // 2)
        shape = (new_rows, self.kv_heads, new_cols, self.head_dim)  # [B, H, T, D]
        n = min(len(self.lengths), self.cap_rows)  # rows added since the last growth hold nothing yet
        w = min(max(self.lengths, default=0), self.cap_cols)
        for bufs in (self.k, self.v):
            for layer in range(self.num_layers):
                new = torch.zeros(shape, dtype=self.dtype, device=self.device)
                if layer < len(bufs):
                    new[:n, :, :w] = bufs[layer][:n, :, :w]
                    bufs[layer] = new
                else:
                    bufs.append(new)
        self.cap_rows, self.cap_cols = new_rows, new_cols
        self.peak_bytes = max(self.peak_bytes, self.capacity_bytes)

    def add_row(self) -> int:
        """A new empty row at the end; returns its index."""
        self.lengths.append(0)
        return len(self.lengths) - 1

    def remove(self, row: int) -> None:
        """Drop a row; the last row moves into its slot (one row copied per layer)."""
        last = len(self.lengths) - 1
        if row != last:
            n = self.lengths[last]
            for bufs in (self.k, self.v):
                for layer in range(self.num_layers):
                    bufs[layer][row, :, :n] = bufs[layer][last, :, :n]
            self.lengths[row] = n
        self.lengths.pop()

    def plan_write(self, src_b: list[int], src_t: list[int], dst_row: list[int], dst_col: list[int]) -> None:
        """Where the next forward's new K/V go; also sets the key width the attention sees."""
        ends = [0] * len(self.lengths)
        for r, c in zip(dst_row, dst_col):
            ends[r] = max(ends[r], c + 1)
        self.width = max(max(ends, default=0), max(self.lengths, default=0))
        self.reserve(len(self.lengths), self.width)
        as_t = lambda xs: torch.tensor(xs, dtype=torch.long, device=self.device)  # noqa: E731
        self._plan = (as_t(src_b), as_t(src_t), as_t(dst_row), as_t(dst_col))

    def write(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scatter `[b, kv_heads, t, head_dim]` new K/V per the plan; return `[rows, kv_heads, width, head_dim]`."""
        src_b, src_t, dst_row, dst_col = self._plan
        self.k[layer][dst_row, :, dst_col] = key[src_b, :, src_t]  # [n, H, D]
        self.v[layer][dst_row, :, dst_col] = value[src_b, :, src_t]
        rows = len(self.lengths)
        return self.k[layer][:rows, :, :self.width], self.v[layer][:rows, :, :self.width]

    def commit(self, new_tokens: list[int]) -> None:
        """Account for the tokens each row just wrote (call after the forward)."""
        self.lengths = [n + q for n, q in zip(self.lengths, new_tokens)]
        self._plan = None
