"""Swap space: host memory kept for swapped-out rows' K/V and reused, so a swap-out copies at memory speed.

A swap-out (BATON §4.3) copies a row's live K/V (per layer `[1, kv_heads, n, head_dim]`, keys and values) to
host memory. Fresh host memory is slow the first time it is written: the kernel backs each page on its first
write. On the 2-core CPU, 30 rows of 600 tokens of SmolLM2-135M's fp32 K/V (829 MB) took 793 ms to copy into
fresh memory and 141-155 ms into memory written before; while a chat starts, the interactive target swaps out
every background row over its cap in one iteration, and that copy is a gap between the chat's first two
tokens (issue #13's ITL). On CUDA, pinned host memory is slow to allocate (`cudaHostAlloc`). vLLM reserves
its swap space once (`--swap-space`); this keeps the buffers of rows swapped back in and hands them to later
swap-outs.

One flat buffer per swapped row, holding all its layers' keys and values (`RunningBatch.extract(into=...)`).
Row lengths vary, so buffers are sized in steps of `GRANULE_TOKENS` tokens and a swap-out takes the smallest
free buffer that holds it, if that is at most twice what a new one would be. Free buffers are kept up to the most bytes that
were ever swapped out at once (what the next burst of swap-outs is likely to need) and dropped beyond it.
"""

from __future__ import annotations

import bisect

import torch

GRANULE_TOKENS = 64  # buffers are sized in steps of this many tokens of one row


class SwapSpace:
    """Reusable host buffers for swapped-out K/V. Engine thread only.

    Args:
        dtype: of the K/V (the model's).
        pin_memory: allocate page-locked memory (CUDA swap-outs copy asynchronously into it).

    Attributes:
        num_allocations: buffers allocated so far (a swap-out served from the free list allocates none).
        in_use_bytes: bytes of buffers held by swapped-out rows now (bytes).
        peak_in_use_bytes: the most `in_use_bytes` has been (bytes); free buffers are kept up to this.
    """

    def __init__(self, dtype: torch.dtype, pin_memory: bool = False):
        self.dtype, self.pin_memory = dtype, pin_memory
        self._free: list[tuple[int, int, torch.Tensor]] = []  # (numel, id, buffer), by numel
        self._itemsize = torch.empty((), dtype=dtype).element_size()
        self.num_allocations = 0
        self.in_use_bytes = self.peak_in_use_bytes = 0

    @property
    def free_bytes(self) -> int:
        """Bytes of free buffers kept for later swap-outs (bytes)."""
        return sum(n for n, _, _ in self._free) * self._itemsize

    def take(self, numel: int, numel_per_token: int) -> torch.Tensor:
        """A flat host buffer `[>= numel]` of `dtype` for one row's K/V: the smallest free one that fits, if at
        most twice what a new one would be, else a new one sized up to a multiple of `GRANULE_TOKENS` tokens
        (`numel_per_token` elements each)."""
        granule = GRANULE_TOKENS * numel_per_token
        sized = -(-numel // granule) * granule  # what a new buffer would be
        i = bisect.bisect_left(self._free, (numel, -1))
        if i < len(self._free) and self._free[i][0] <= 2 * sized:
            size, _, buf = self._free.pop(i)
        else:
            size = sized
            buf = torch.empty(size, dtype=self.dtype, pin_memory=self.pin_memory)
            self.num_allocations += 1
        self.in_use_bytes += size * self._itemsize
        self.peak_in_use_bytes = max(self.peak_in_use_bytes, self.in_use_bytes)
        return buf

    def give(self, buf: torch.Tensor | None) -> None:
        """A swapped-in row's buffer (from `take`) is free again: keep it, unless the free buffers would pass
        `peak_in_use_bytes`. None is ignored."""
        if buf is None:
            return
        size = buf.numel()
        self.in_use_bytes -= size * self._itemsize
        if self.free_bytes + size * self._itemsize <= self.peak_in_use_bytes:
            bisect.insort(self._free, (size, id(buf), buf))
