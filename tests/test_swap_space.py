"""`backend.swap_space.SwapSpace` alone: buffers are reused by size and kept only up to the peak in use."""

from __future__ import annotations

import torch

from backend.swap_space import GRANULE_TOKENS, SwapSpace


def test_a_buffer_given_back_serves_the_next_swap_out_that_fits():
    space = SwapSpace(torch.float32)
    a = space.take(1000, 10)  # 100 tokens of 10 elements -> sized up to 128 tokens
    assert a.numel() == 2 * GRANULE_TOKENS * 10 and space.num_allocations == 1
    space.give(a)
    b = space.take(1200, 10)  # fits the free buffer (1,280 >= 1,200)
    assert b.data_ptr() == a.data_ptr() and space.num_allocations == 1
    c = space.take(1200, 10)  # none free: a new one
    assert space.num_allocations == 2 and c.data_ptr() != b.data_ptr()


def test_a_much_larger_free_buffer_is_not_spent_on_a_small_row():
    space = SwapSpace(torch.float32)
    big = space.take(10_000, 10)
    space.give(big)
    small = space.take(100, 10)  # a new one would be 640 elements: 12,800 is more than twice that
    assert small.data_ptr() != big.data_ptr() and space.num_allocations == 2


def test_free_buffers_are_kept_up_to_the_peak_in_use():
    space = SwapSpace(torch.float32)
    bufs = [space.take(640, 10) for _ in range(3)]
    peak = space.peak_in_use_bytes
    assert peak == 3 * 640 * 4 and space.in_use_bytes == peak
    for buf in bufs:
        space.give(buf)
    assert space.in_use_bytes == 0 and space.free_bytes == peak
    extra = torch.empty(640)  # a buffer the space never handed out would pass the bound
    space.in_use_bytes += extra.numel() * 4
    space.give(extra)
    assert space.free_bytes == peak
    space.give(None)  # ignored
