"""`RowKV`: the K/V of one request outside the running batch (a fresh prefill, a swapped-out row)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RowKV:
    """The K/V of one request outside the batch: a fresh prefill or a swapped-out row.

    Attributes:
        keys, values: one tensor per layer, each `[1, kv_heads, length, head_dim]`.
        length: cached tokens (int).
        storage: the flat swap-space buffer the tensors are views of (`swap_space.SwapSpace`), or None.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int
    storage: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the K/V tensors."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))
