"""The prefix cache: exact (a block is served only for its own token sequence), bounded (bytes per tier, LRU
leaves first), and invisible in outputs (greedy tokens with it equal tokens without it and solo `generate`)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend import EngineConfig, Priority, SamplingParams
from backend.prefix_cache import DEVICE, HOST, PrefixCache
from backend.runner import ModelRunner
from conftest import solo_greedy

LAYERS, HEADS, DIM, BS = 2, 2, 4, 4


def _cache(blocks: int, host_blocks: int = 0) -> PrefixCache:
    c = PrefixCache(BS, LAYERS, HEADS, DIM, torch.float32, "cpu", 0, 0)
    c.capacity = [blocks * c.block_bytes, host_blocks * c.block_bytes]
    return c


def _kv(n: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(1, HEADS, n, DIM, generator=g) for _ in range(LAYERS)],
            [torch.randn(1, HEADS, n, DIM, generator=g) for _ in range(LAYERS)])


# ------------------------------------------------------------------------------------ the block tree
def test_a_block_is_served_only_for_its_own_tokens():
    cache = _cache(16)
    seq = list(range(100, 113))  # 13 tokens: 3 whole blocks are kept, the 4th (1 token) is not
    keys, values = _kv(len(seq), 0)
    assert cache.insert(seq, keys, values) == 3 and cache.num_blocks == 3
    m = cache.match(seq, len(seq) - 1)
    assert m.num_tokens == 12
    k, v = cache.load(m)
    assert all(torch.equal(k[i], keys[i][:, :, :12]) and torch.equal(v[i], values[i][:, :, :12]) for i in range(LAYERS))
    assert cache.match(seq, 12 - 1).num_tokens == 11  # capped: the prompt's last token is always computed
    changed = seq.copy()
    changed[5] = 7  # inside block 1: block 0 still matches, nothing after the change does
    assert cache.match(changed, 12).num_tokens == 4
    assert cache.match([7, *seq[1:]], 12).num_tokens == 0
    assert cache.match(seq[:3], 2).num_tokens == 0  # shorter than a block


def test_blocks_shared_by_two_sequences_are_kept_once():
    cache = _cache(16)
    a, b = list(range(12)), [*range(8), 50, 51, 52, 53]
    cache.insert(a, *_kv(12, 1))
    assert cache.insert(b, *_kv(12, 2)) == 1  # blocks 0 and 1 are a's
    assert cache.num_blocks == 4
    assert cache.match(b, 12).num_tokens == 12


def test_insert_with_an_offset_extends_a_cached_chain():
    """A row leaving the batch gives all its K/V; a chain whose start was evicted is not extended."""
    cache = _cache(16)
    seq = list(range(16))
    keys, values = _kv(16, 3)
    cache.insert(seq[:8], [k[:, :, :8] for k in keys], [v[:, :, :8] for v in values])
    assert cache.insert(seq, [k[:, :, 8:] for k in keys], [v[:, :, 8:] for v in values], offset=8) == 2
    k, _ = cache.load(cache.match(seq, 16))
    assert torch.equal(k[0], keys[0])
    other = _cache(16)
    assert other.insert(seq, [k[:, :, 8:] for k in keys], [v[:, :, 8:] for v in values], offset=8) == 0


def test_the_least_recently_used_leaf_goes_first_and_the_bound_holds():
    cache = _cache(4)
    a, b = list(range(12)), [*range(4), *range(60, 68)]  # share block 0
    cache.insert(a, *_kv(12, 4))
    cache.insert(b, *_kv(12, 5))  # 2 new blocks, room for 1: a's leaf goes (a's root is b's too)
    assert cache.tier_bytes(DEVICE) <= cache.capacity[DEVICE] and cache.num_blocks == 4
    assert cache.match(a, 12).num_tokens == 8 and cache.match(b, 12).num_tokens == 12
    cache.match(a, 12)  # a is now the most recent: b's leaf goes next
    cache.insert(list(range(200, 204)), *_kv(4, 6))
    assert cache.match(b, 12).num_tokens == 8 and cache.match(a, 12).num_tokens == 8
    assert cache.counters["evictions"] == 2


def test_a_cache_smaller_than_a_chain_keeps_its_start():
    cache = _cache(2)
    seq = list(range(20))
    assert cache.insert(seq, *_kv(20, 7)) == 2
    assert cache.match(seq, 20).num_tokens == 8 and cache.tier_bytes(DEVICE) == 2 * cache.block_bytes


def test_evicted_device_blocks_move_to_the_host_tier_before_they_are_dropped():
    cache = _cache(2, host_blocks=2)
    seq = list(range(24))  # 6 blocks: 2 on the device, 2 in host memory, 2 dropped... or never added
    keys, values = _kv(24, 8)
    added = cache.insert(seq, keys, values)
    assert cache.tier_bytes(DEVICE) <= 2 * cache.block_bytes and cache.tier_bytes(HOST) <= 2 * cache.block_bytes
    assert added == 4 and cache.counters["offloads"] == 2
    m = cache.match(seq, 24)
    assert m.num_tokens == 16 and {b.tier for b in m.blocks} == {DEVICE, HOST}
    k, v = cache.load(m)  # the host blocks come back exactly
    assert torch.equal(k[1], keys[1][:, :, :16]) and torch.equal(v[0], values[0][:, :, :16])
    assert cache.shrink(DEVICE, 0) == 2 and cache.tier_bytes(DEVICE) == 0  # giving memory back
    assert cache.match(seq, 24).num_tokens <= 16


def test_prefix_cache_config_is_validated():
    with pytest.raises(ValueError, match="prefix_cache_bytes"):
        EngineConfig(prefix_cache_bytes=-1)
    with pytest.raises(ValueError, match="prefix_block_size"):
        EngineConfig(prefix_block_size=0)


# ------------------------------------------------------------- logits against solo forwards (runner)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), capacity_blocks=st.sampled_from([0, 1, 3, 64]))
def test_logits_from_a_cached_prefix_equal_a_solo_forward(tiny, data, capacity_blocks):
    """Random workloads of prompts that share prefixes (block-aligned or not) through a cache of random size
    (0: off; 1: every insert evicts): the last-position logits equal a solo forward's within 1e-4 (fp32), and
    the cache never holds more than its bound."""
    runner = ModelRunner(tiny.model, tiny.device)
    try:
        cache = PrefixCache(8, runner.num_layers, runner.kv_heads, runner.head_dim, runner.dtype, "cpu", 0)
        cache.capacity = [capacity_blocks * cache.block_bytes, 0]
        base = data.draw(st.lists(st.integers(3, 250), min_size=1, max_size=40))
        for _ in range(data.draw(st.integers(2, 5))):
            keep = data.draw(st.integers(0, len(base)))
            tail = data.draw(st.lists(st.integers(3, 250), min_size=1, max_size=20))
            prompt = base[:keep] + tail
            match = cache.match(prompt, len(prompt) - 1)
            if match.num_tokens:
                seeded = runner.cache_from_kv(*cache.load(match))
                logits, kv_cache = runner.prefill_chunk(prompt[match.num_tokens:], match.num_tokens, seeded)
                row = runner.cache_to_row(kv_cache)
            else:
                logits, row = runner.prefill(prompt)
            with torch.inference_mode():
                solo = tiny.model(input_ids=torch.tensor([prompt])).logits[0, -1].float()
            assert (logits - solo).abs().max().item() < 1e-4
            cache.insert(prompt, row.keys, row.values)
            assert cache.tier_bytes(DEVICE) <= cache.capacity[DEVICE]
            base = prompt if data.draw(st.booleans()) else base
    finally:
        runner.close()


# --------------------------------------------------------------------------- the engine, end to end
GREEDY = dict(temperature=0, ignore_eos=True)


async def test_turn_after_turn_prefills_only_what_is_new(make_engine, tiny):
    """A conversation resent turn by turn (its own answers as assistant turns): each turn is served from the
    cache up to the last whole block of what the engine computed, and its tokens equal solo `generate`."""
    engine = make_engine()
    history = list(range(3, 40))
    cached = []
    for turn in range(4):
        [res] = await asyncio.to_thread(engine.generate_batch, [history], SamplingParams(max_tokens=9, **GREEDY),
                                        Priority.INTERACTIVE)
        assert res.token_ids == solo_greedy(tiny, history, 9)
        cached.append(res.cached_tokens)
        computed = len(history) + len(res.token_ids) - 1  # the last token's K/V were never computed
        history = history + res.token_ids + [5 + turn, 6, 7, 8, 9, 10]
        expected = computed // 16 * 16
        assert res.cached_tokens <= res.prompt_tokens - 1
        if turn:
            assert res.cached_tokens == prev_expected
        prev_expected = expected
    assert cached[0] == 0 and cached == sorted(cached) and cached[-1] > cached[1]
    c = engine.stats().counters
    assert c["num_prefix_cache_hits"] == sum(cached) and c["num_prefix_cache_hit_requests"] == 3


@pytest.mark.parametrize("shared", [5, 37, 64, 70, 130])
async def test_prompts_sharing_prefixes_together_and_one_after_another_equal_solo(make_engine, tiny, shared):
    """Shared prefixes of different lengths (shorter than a block, block-aligned or not): arriving together
    (followers start from the leader's blocks in the same iteration) and one after another; outputs equal those
    without the cache and solo `generate`."""
    prefix = [3 + (11 * i) % 240 for i in range(shared)]
    prompts = [prefix + [7 + j, 9, 11 + 2 * j] for j in range(5)]
    params = SamplingParams(max_tokens=12, **GREEDY)
    on, off = make_engine(max_batch_size=4), make_engine(max_batch_size=4, prefix_cache_bytes=0)
    together = await asyncio.to_thread(on.generate_batch, prompts, params)
    one_by_one = [(await asyncio.to_thread(on.generate_batch, [p], params))[0] for p in prompts]
    reference = await asyncio.to_thread(off.generate_batch, prompts, params)
    for p, a, b, r in zip(prompts, together, one_by_one, reference):
        assert a.token_ids == b.token_ids == r.token_ids == solo_greedy(tiny, p, 12)
        assert r.cached_tokens == 0
    if shared >= 64:  # long enough to share within one admission
        assert sum(r.cached_tokens for r in together) > 0
    if shared >= 32:  # the second round finds the first's blocks
        assert all(r.cached_tokens >= shared // 16 * 16 for r in one_by_one)
    assert off.stats().prefix_cache_capacity_bytes == 0 and "num_prefix_cache_queries" not in off.stats().counters


async def test_cached_prefixes_survive_preemption_and_swap_exactly(make_engine, decode_gate, tiny):
    """Background rows that started from cached prefixes are preempted by chats (a batch of 2) and swapped
    back; every output equals solo `generate`."""
    engine = make_engine(max_batch_size=2)
    system = [3 + (7 * i) % 200 for i in range(80)]
    warm = system + [1, 2]
    await asyncio.to_thread(engine.generate_batch, [warm], SamplingParams(max_tokens=2, **GREEDY))
    background = [system + [20 + j] for j in range(2)]
    gate = decode_gate(engine, lambda batch: batch.size == 2)
    job = asyncio.create_task(asyncio.to_thread(engine.generate_batch, background,
                                                SamplingParams(max_tokens=30, **GREEDY), Priority.BATCH))
    await gate.parked()
    chats = [system + [40, 41], list(range(60, 90))]

    async def chat(p):
        return [o.token_id async for o in engine.generate(p, SamplingParams(max_tokens=10, **GREEDY))
                if o.token_id is not None]

    tasks = [asyncio.create_task(chat(p)) for p in chats]
    from conftest import queued
    await queued(engine, 2)
    gate.release()
    chat_out = await asyncio.gather(*tasks)
    bg = await job
    assert engine.stats().counters["num_preemptions"] >= 1
    for p, out in zip(chats, chat_out):
        assert out == solo_greedy(tiny, p, 10)
    for p, r in zip(background, bg):
        assert r.token_ids == solo_greedy(tiny, p, 30) and r.cached_tokens == 80
    assert engine.stats().counters["num_prefix_cache_hit_requests"] >= 3


async def test_a_cache_of_one_block_evicts_on_every_insert_and_changes_nothing(make_engine, tiny):
    engine = make_engine(max_batch_size=3)
    block_bytes = engine._core.prefix.cache.block_bytes
    small = make_engine(max_batch_size=3, prefix_cache_bytes=block_bytes)
    prompts = [[3 + (5 * i + j) % 200 for i in range(40 + 9 * j)] for j in range(4)]
    params = SamplingParams(max_tokens=10, **GREEDY)
    for _ in range(2):
        got = await asyncio.to_thread(small.generate_batch, prompts, params)
        assert [r.token_ids for r in got] == [solo_greedy(tiny, p, 10) for p in prompts]
        stats = small.stats()
        assert stats.prefix_cache_bytes <= block_bytes == stats.prefix_cache_capacity_bytes
    assert small.stats().counters["num_prefix_cache_evictions"] > 0


async def test_the_cache_never_takes_the_batch_s_kv_budget(make_engine, tiny):
    """Under a fixed KV budget, a full prefix cache leaves the budget whole: a request that needs all of it
    still runs, and exactly as without the cache."""
    budget = 1024 * 1024
    engine = make_engine(kv_budget_bytes=budget, prefix_cache_bytes=budget)
    fill = [[3 + (13 * i + j) % 240 for i in range(300)] for j in range(8)]
    await asyncio.to_thread(engine.generate_batch, fill, SamplingParams(max_tokens=4, **GREEDY))
    assert engine.stats().prefix_cache_bytes > budget // 2
    bpt = engine._core.bytes_per_token
    big = [5 + (3 * i) % 200 for i in range(budget // bpt // 2)]
    [res] = await asyncio.to_thread(engine.generate_batch, [big], SamplingParams(max_tokens=budget // bpt // 3, **GREEDY))
    assert res.finish_reason == "length" and res.token_ids == solo_greedy(tiny, big, budget // bpt // 3)
    assert engine.stats().kv_budget_bytes == budget


async def test_a_chunked_prompt_follows_a_prefix_prefilled_earlier_in_the_same_iteration(make_engine, tiny):
    """Prompts too long to be admitted whole together: the first is prefilled whole, the second gets a chunk in
    the same iteration; that chunk starts from the first one's blocks instead of computing the shared prefix
    again (found by benchmarks/shared_prefix.py: each job computed its system prompt twice)."""
    shared = [10 + i % 200 for i in range(1017)]
    prompts = [shared + [220 + i] * 20 for i in range(4)]  # 1,037 tokens each; the prefill budget is 2,048
    params = SamplingParams(max_tokens=2, **GREEDY)
    engine = make_engine()
    got = await asyncio.to_thread(engine.generate_batch, prompts, params, Priority.BATCH)
    assert [r.cached_tokens for r in got] == [0, 1008, 1008, 1008]
    off = make_engine(prefix_cache_bytes=0)
    ref = await asyncio.to_thread(off.generate_batch, prompts, params, Priority.BATCH)
    assert [r.token_ids for r in got] == [r.token_ids for r in ref]
