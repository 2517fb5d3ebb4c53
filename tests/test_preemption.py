"""Preemptive priority scheduling: swap-out/swap-in fidelity, interactive latency, KV budget, starvation."""

from __future__ import annotations

import asyncio
import threading

import pytest

from backend import EngineConfig, Priority, SamplingParams
from backend.config import SamplingParams as SP
from backend.core import EngineCore
from backend.request import Request
from backend.scheduler import MemoryView, Scheduler
from conftest import queued, solo_greedy


class _Run:
    """Consume one stream in the background, remembering every output."""

    def __init__(self, engine, prompt, params, priority):
        self.outs = []
        self.started = asyncio.Event()
        self.task = asyncio.create_task(self._go(engine, prompt, params, priority))

    async def _go(self, engine, prompt, params, priority):
        async for out in engine.generate(prompt, params, priority=priority):
            self.outs.append(out)
            if len(self.outs) >= 3:
                self.started.set()
        self.started.set()

    @property
    def tokens(self):
        return [o.token_id for o in self.outs if o.token_id is not None]


async def _collect(stream):
    return [o async for o in stream]


def _greedy(n):
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


async def test_preempted_rows_swap_back_and_match_uninterrupted_runs(make_engine, decode_gate, tiny):
    engine = make_engine(max_batch_size=2)
    gate = decode_gate(engine, lambda batch: batch.size == 2)  # the chat arrives while both rows run
    bg = [_Run(engine, p, _greedy(60), Priority.BATCH) for p in ("background one", "background two, longer")]
    await gate.parked()
    fg = _Run(engine, "interactive question", _greedy(20), Priority.INTERACTIVE)
    await queued(engine)
    gate.release()
    await asyncio.gather(*(r.task for r in [*bg, fg]))
    counters = engine.stats().counters
    assert counters["num_preemptions"] >= 1 and counters["num_swap_ins"] == counters["num_swap_outs"]
    for run, prompt, n in ((bg[0], "background one", 60), (bg[1], "background two, longer", 60),
                           (fg, "interactive question", 20)):
        assert run.outs[-1].finish_reason == "length"
        assert run.tokens == solo_greedy(tiny, engine.tokenize(prompt), n)


async def test_interactive_first_token_within_one_decode_step_of_a_full_batch(make_engine, decode_gate):
    engine = make_engine(max_batch_size=3)
    gate = decode_gate(engine, lambda batch: batch.size == 3)
    bg = [_Run(engine, f"background job {i}", _greedy(400), Priority.BATCH) for i in range(3)]
    await gate.parked()
    urgent = asyncio.create_task(_collect(engine.generate("urgent", _greedy(5), priority=Priority.INTERACTIVE)))
    await queued(engine)
    gate.release()
    fg = await urgent
    assert fg[0].token_id is not None
    # steps counted by the engine from the moment it received the request (reading stats() here would race
    # with the engine thread, which may finish another step before the request reaches its inbox)
    assert fg[0].engine_step - fg[0].arrival_step <= 1  # its own prefill ran before the next decode step
    assert engine.stats().counters["num_preemptions"] == 1
    for r in bg:
        r.task.cancel()
    await asyncio.gather(*(r.task for r in bg), return_exceptions=True)


async def test_small_kv_budget_is_respected_and_everything_completes(make_engine, tiny):
    budget = 60 * 1024  # random:tiny: 512 bytes per token of one row -> about 117 row-tokens
    engine = make_engine(max_batch_size=8, kv_budget_bytes=budget)
    prompts = [f"request number {i}" for i in range(6)]
    runs = [_Run(engine, p, _greedy(30), Priority.BATCH) for p in prompts]
    await asyncio.gather(*(r.task for r in runs))
    stats = engine.stats()
    assert 0 < stats.counters["peak_kv_window_bytes"] <= budget
    assert stats.kv_budget_bytes == budget
    for run, prompt in zip(runs, prompts):
        assert run.tokens == solo_greedy(tiny, engine.tokenize(prompt), 30)
    with pytest.raises(ValueError, match="could never run"):
        [o async for o in engine.generate("x" * 50, _greedy(200))]


async def test_kv_held_between_prefill_chunks_counts_against_the_budget(make_engine, tiny):
    """A long prompt's K/V held between prefill chunks live outside the batch's window; under a fixed budget
    they are counted too: chats arriving mid-prefill are admitted only into the room left, and when the
    rows grow, the background prompt's partial K/V are dropped (its prefill restarts) before any chat row
    is swapped out. Window plus held K/V never pass the budget, and every output equals its solo run."""
    budget = 48 * 1024  # random:tiny: 512 bytes per token of one row -> 96 row-tokens
    engine = make_engine(max_batch_size=8, kv_budget_bytes=budget, max_prefill_tokens=16,
                         max_background_prefill_tokens=None)
    runner, real = engine._core.runner, engine._core.runner.prefill_chunk
    chunk_starts, in_second, release = [], threading.Event(), threading.Event()

    def gated(*args):
        chunk_starts.append(args[1])
        out = real(*args)  # the chunk's forward runs whole (a chat arriving during it would stop it)
        if len(chunk_starts) == 2:
            in_second.set()
            release.wait(10)  # hold the engine at the end of the long prompt's second chunk while chats arrive
        return out

    runner.prefill_chunk = gated
    long = [3 + (7 * i) % 200 for i in range(60)]  # 60 tokens: chunks of 16
    bg = _Run(engine, long, _greedy(4), Priority.BATCH)
    assert await asyncio.to_thread(in_second.wait, 10)
    chats = [f"chat {i}" for i in range(3)]  # 3 rows of ~27 tokens fit in the budget, not with the held K/V
    fg = [_Run(engine, p, _greedy(20), Priority.INTERACTIVE) for p in chats]
    while engine._inbox.qsize() < len(chats):
        await asyncio.sleep(0.005)  # the chats are in the engine's inbox, behind the held chunk
    release.set()
    await asyncio.gather(bg.task, *(r.task for r in fg))
    counters = engine.stats().counters
    assert 0 < counters["peak_kv_bytes"] <= budget
    assert counters["num_prefill_restarts"] >= 1 and counters.get("num_preemptions", 0) == 0
    assert bg.tokens == solo_greedy(tiny, long, 4)
    for run, prompt in zip(fg, chats):
        assert run.tokens == solo_greedy(tiny, engine.tokenize(prompt), 20)


async def test_a_row_is_preempted_at_most_max_preemptions_times(make_engine, decode_gate, tiny):
    engine = make_engine(max_batch_size=1, max_preemptions=1)
    background_decoding = lambda batch: any(r.priority == Priority.BATCH for r in engine._core.rows)  # noqa: E731
    chats = []
    for prompt in ("first", "second"):  # each sent while the background row is decoding (swapped back in)
        gate = decode_gate(engine, background_decoding)
        if not chats:
            bg = _Run(engine, "long background work", _greedy(120), Priority.BATCH)
        await gate.parked()
        chat = asyncio.create_task(_collect(engine.generate(prompt, _greedy(5), priority=Priority.INTERACTIVE)))
        await queued(engine)
        gate.release()
        chats.append(await chat)
    first, second = chats
    await bg.task
    assert engine.stats().counters["num_preemptions"] == 1
    assert first[-1].engine_step < bg.outs[-1].engine_step  # the first chat preempted the background row
    assert second[0].arrival_step < bg.outs[-1].engine_step <= second[0].engine_step  # the second waited for it
    assert first[-1].finish_reason == second[-1].finish_reason == "length"
    assert bg.tokens == solo_greedy(tiny, engine.tokenize("long background work"), 120)


def _req(rid, priority, seq=0):
    return Request(rid, [1, 2, 3], SP(), priority, lambda out: None, None, 100, seq=seq)


def test_scheduler_orders_by_priority_then_swapped_then_arrival():
    s = Scheduler()
    new_batch, swapped_batch, agent = _req("new", Priority.BATCH), _req("old", Priority.BATCH), _req("a", Priority.AGENT)
    s.add(new_batch)
    s.add(swapped_batch)
    swapped_batch.swapped = object()
    s.remove("old")
    s.requeue(swapped_batch)
    s.add(agent)
    order = []
    while (head := s.peek()) is not None:  # the head of the queue, taken as a plan's step takes it
        order.append(head.request_id)
        assert s.take(head)
    assert order == ["a", "old", "new"]


def test_victim_is_lowest_priority_most_recent_and_never_pinned():
    s = Scheduler(max_preemptions=2)
    rows = [_req("i", Priority.INTERACTIVE), _req("b1", Priority.BATCH), _req("b2", Priority.BATCH),
            _req("a", Priority.AGENT)]
    for n, r in enumerate(rows):
        r.start_seq = n
    assert s.choose_victim(rows, int(Priority.INTERACTIVE)) == 2
    assert s.choose_victim(rows, int(Priority.AGENT)) == 2
    assert s.choose_victim(rows, int(Priority.BATCH)) is None
    rows[2].num_preemptions = 2
    assert s.choose_victim(rows, int(Priority.INTERACTIVE)) == 1
    assert s.choose_victim(rows, None) == 1


def test_memory_view_watermarks():
    view = MemoryView(rows=2, seq_len=99, bytes_per_token=10, budget_bytes=4000, low_watermark=0.8,
                      high_watermark=0.95)
    assert view.window_bytes(2, 99) == 2000
    assert view.fits_after_insert(50)  # 3 x 100 x 10 = 3000 <= 3200
    assert not view.fits_after_insert(120)  # 3 x 121 x 10 = 3630 > 3200
    assert not view.over_high_watermark()
    assert MemoryView(4, 99, 10, 4000, 0.8, 0.95).over_high_watermark()  # 4000 > 3800
    assert MemoryView(0, 0, 10, 1, 0.8, 0.95).fits_after_insert(10_000)  # an empty batch takes anything
    held = MemoryView(2, 99, 10, 4000, 0.8, 0.95, held_bytes=500)  # K/V held between prefill chunks
    assert not held.fits_after_insert(50)  # 3000 + 500 > 3200
    assert not held.over_high_watermark() and MemoryView(2, 99, 10, 4000, 0.8, 0.95, 1900).over_high_watermark()
    assert MemoryView(1, 99, 10, 1000, 0.8, 0.95, 1).over_high_watermark()  # a row and a held prompt: two consumers
    assert not MemoryView(1, 99, 10, 1000, 0.8, 0.95).over_high_watermark()  # one row alone is never swapped out
    assert not MemoryView(0, 0, 10, 1000, 0.8, 0.95, 5000).over_high_watermark()  # nor a lone held prompt


def test_only_k_v_held_mid_prefill_count_as_held(tiny):
    """A swapped-out request that was once prefilled in chunks (`num_prefilled` set, no cache left) holds
    nothing on the device: admitting it subtracts nothing from the K/V others hold."""
    core = EngineCore(EngineConfig(model=tiny.name, kv_budget_bytes=1 << 20), tiny, lambda request_id: None)
    holder, swapped = _req("holder", Priority.BATCH), _req("swapped", Priority.BATCH)
    holder.num_prefilled, holder.prefill_cache = 16, object()
    swapped.num_prefilled = 40  # its prefill finished long ago; its K/V are on the host
    core.scheduler.add(holder)
    assert core.scheduler.memory_view(core.snapshot(), admitting=swapped).held_bytes == 16 * core.bytes_per_token
    assert core.scheduler.memory_view(core.snapshot(), admitting=holder).held_bytes == 0


def test_the_lowest_priority_latest_partial_prefill_is_dropped_first():
    sched = Scheduler()
    reqs = [_req("chat", Priority.INTERACTIVE), _req("job-1", Priority.BATCH), _req("job-2", Priority.BATCH),
            _req("new", Priority.BATCH)]
    for r in reqs:
        sched.add(r)
    assert sched.choose_prefill_to_drop() is None and sched.prefilled_tokens() == 0
    for r in reqs[:3]:
        r.num_prefilled, r.prefill_cache = 16, object()
    assert sched.choose_prefill_to_drop() is reqs[2] and sched.prefilled_tokens() == 48


async def test_swap_outs_reuse_the_swap_space_of_rows_swapped_back_in(make_engine, decode_gate, tiny):
    """A second chat preempting the same background row copies its K/V into the host buffer the first swap-out
    used (fresh host memory is slow to write the first time), and every output stays exact."""
    engine = make_engine(max_batch_size=2)
    space = engine._core.swap_space
    bg = [_Run(engine, p, _greedy(80), Priority.BATCH) for p in ("background one", "background two")]
    for turn in range(2):
        gate = decode_gate(engine, lambda batch: batch.size == 2)
        await gate.parked()
        chat = _Run(engine, f"chat {turn}", _greedy(4), Priority.INTERACTIVE)
        await queued(engine)
        gate.release()
        await chat.task
        assert chat.tokens == solo_greedy(tiny, engine.tokenize(f"chat {turn}"), 4)
        if turn == 0:
            allocated = space.num_allocations
    await asyncio.gather(*(r.task for r in bg))
    counters = engine.stats().counters
    assert counters["num_preemptions"] == 2 and counters["num_swap_ins"] == 2
    assert allocated == 1 and space.num_allocations == 1 and space.in_use_bytes == 0
    for run, prompt in zip(bg, ("background one", "background two")):
        assert run.tokens == solo_greedy(tiny, engine.tokenize(prompt), 80)
