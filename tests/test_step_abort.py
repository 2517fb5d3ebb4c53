"""Preemptible forwards (`backend/step_abort.py`): a chat arriving stops the background forward in flight.

Every test parks the engine thread inside a forward (a `DecodeGate`, or a pre-hook on the model's first
decoder layer), queues a chat while it is parked, then lets it go: no timing is involved.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from backend import Priority, SamplingParams
from backend.step_abort import AbortSwitch, StepAborted
from conftest import queued, solo_greedy


def _greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


async def _tokens(engine, prompt, params, priority) -> list[int]:
    return [o.token_id async for o in engine.generate(prompt, params, priority=priority) if o.token_id is not None]


def _record_tokens(engine) -> list[str]:
    """The priority of every token the engine accepts, in the engine thread's order."""
    order, core = [], engine._core
    real = core._accept_token

    def accept(req, token):
        order.append(req.priority.name)
        return real(req, token)

    core._accept_token = accept
    return order


async def _chat_while_parked(engine, gate: "_LayerGate", background: asyncio.Task, prompt: str, n: int):
    """Once `gate` holds the engine inside a background forward, queue a chat of `n` greedy tokens and let the
    engine go; returns (what `background` returns, the chat's tokens)."""
    assert await asyncio.to_thread(gate.parked.wait, 60)
    chat = asyncio.create_task(_tokens(engine, prompt, _greedy(n), Priority.INTERACTIVE))
    await queued(engine)
    gate.release()
    return await asyncio.gather(background, chat)


class _LayerGate:
    """Parks the engine thread at the model's first decoder layer during the first forward for which
    `when()` holds, until `release()` (the abort check of that layer has passed; the next layer's stops it)."""

    def __init__(self, engine, when):
        self.parked, self._released, self._when = threading.Event(), threading.Event(), when
        layers = engine._core.runner.model.model.layers
        self._handle = layers[0].register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        if not self.parked.is_set() and self._when():
            self.parked.set()
            self._released.wait(60)

    def release(self):
        self._released.set()
        self._handle.remove()


async def test_a_chat_stops_a_background_decode_step_and_every_output_stays_exact(make_engine, decode_gate, tiny):
    engine = make_engine(max_batch_size=4)
    prompts = [f"background job line {i}" for i in range(4)]
    order = _record_tokens(engine)
    gate = decode_gate(engine, lambda batch: batch.size == 4, skip=2)
    bg = [asyncio.create_task(_tokens(engine, p, _greedy(40), Priority.BATCH)) for p in prompts]
    await gate.parked()
    parked_at = len(order)
    chat = asyncio.create_task(_tokens(engine, "a person asks", _greedy(12), Priority.INTERACTIVE))
    await queued(engine)
    gate.release()
    outs = await asyncio.gather(*bg, chat)
    counters = engine.stats().counters
    assert counters["num_aborted_forwards"] == 1
    assert order[parked_at] == "INTERACTIVE"  # no background token came between the chat and its first token
    assert outs[-1] == solo_greedy(tiny, engine.tokenize("a person asks"), 12)
    for prompt, tokens in zip(prompts, outs):
        assert tokens == solo_greedy(tiny, engine.tokenize(prompt), 40)


async def test_a_stopped_step_draws_no_random_numbers(make_engine, decode_gate):
    """Seeded background rows give the same tokens whether or not one of their steps was stopped."""
    params = [SamplingParams(max_tokens=30, temperature=1.0, top_p=0.9, seed=s, ignore_eos=True) for s in (1, 2, 3)]
    prompts = ["sampled one", "sampled two", "sampled three"]
    alone = make_engine(max_batch_size=4)
    expected = [await _tokens(alone, p, sp, Priority.BATCH) for p, sp in zip(prompts, params)]

    engine = make_engine(max_batch_size=4)
    gate = decode_gate(engine, lambda batch: batch.size == 3, skip=3)
    bg = [asyncio.create_task(_tokens(engine, p, sp, Priority.BATCH)) for p, sp in zip(prompts, params)]
    await gate.parked()
    chat = asyncio.create_task(_tokens(engine, "hello", _greedy(5), Priority.INTERACTIVE))
    await queued(engine)
    gate.release()
    outs = await asyncio.gather(*bg, chat)
    assert engine.stats().counters["num_aborted_forwards"] == 1
    assert outs[:3] == expected


async def test_a_chat_stops_a_background_prefill_chunk_which_resumes_exactly(make_engine, tiny):
    engine = make_engine(max_batch_size=4, max_prefill_tokens=16)
    core = engine._core
    long = [3 + (7 * i) % 200 for i in range(60)]  # chunks of 16 tokens
    taken = []  # the start of every chunk prefilled
    real_chunk = core.runner.prefill_chunk

    def chunk(ids, start, cache):
        taken.append(start)
        return real_chunk(ids, start, cache)

    core.runner.prefill_chunk = chunk
    gate = _LayerGate(engine, lambda: taken == [0, 16])  # inside the second chunk's forward
    bg = asyncio.create_task(_tokens(engine, long, _greedy(8), Priority.BATCH))
    bg_tokens, chat_tokens = await _chat_while_parked(engine, gate, bg, "quick question", 6)
    assert engine.stats().counters["num_aborted_forwards"] == 1
    assert taken.count(16) == 2  # the stopped chunk ran again, from the K/V of the first one
    assert bg_tokens == solo_greedy(tiny, long, 8)
    assert chat_tokens == solo_greedy(tiny, engine.tokenize("quick question"), 6)


async def test_a_chat_stops_a_packed_background_prefill(make_engine, tiny):
    engine = make_engine(max_batch_size=4)
    core = engine._core
    packed = []
    real = core.runner.prefill_packed

    def prefill_packed(prompts):
        packed.append(len(prompts))
        return real(prompts)

    core.runner.prefill_packed = prefill_packed
    gate = _LayerGate(engine, lambda: packed == [3])
    prompts = ["first newcomer", "second newcomer here", "third"]
    bg = asyncio.create_task(asyncio.to_thread(
        engine.generate_batch, prompts, _greedy(10), priority=Priority.BATCH))
    results, chat_tokens = await _chat_while_parked(engine, gate, bg, "are you there", 6)
    assert engine.stats().counters["num_aborted_forwards"] == 1
    assert packed[0] == 3 and len(packed) >= 2  # the stopped group was prefilled again
    for prompt, result in zip(prompts, results):
        assert result.token_ids == solo_greedy(tiny, engine.tokenize(prompt), 10)
    assert chat_tokens == solo_greedy(tiny, engine.tokenize("are you there"), 6)


async def test_a_forward_carrying_a_chat_is_never_stopped(make_engine, decode_gate, tiny):
    engine = make_engine(max_batch_size=4)
    gate = decode_gate(engine, lambda batch: batch.size == 2, skip=1)
    first = asyncio.create_task(_tokens(engine, "first chat", _greedy(30), Priority.INTERACTIVE))
    bg = asyncio.create_task(_tokens(engine, "background", _greedy(30), Priority.BATCH))
    await gate.parked()
    second = asyncio.create_task(_tokens(engine, "second chat", _greedy(10), Priority.INTERACTIVE))
    await queued(engine)
    gate.release()
    outs = await asyncio.gather(first, bg, second)
    assert engine.stats().counters.get("num_aborted_forwards", 0) == 0
    for prompt, n, tokens in (("first chat", 30, outs[0]), ("background", 30, outs[1]), ("second chat", 10, outs[2])):
        assert tokens == solo_greedy(tiny, engine.tokenize(prompt), n)


def test_the_switch_stops_only_the_thread_that_armed_it(tiny):
    switch = AbortSwitch()
    assert switch.install(tiny.model)
    ids = tiny.tokenizer("x", return_tensors="pt").input_ids
    switch.interactive_arrived()
    tiny.model(ids)  # not armed: runs
    errors = []

    def other_thread():
        try:
            tiny.model(ids)
        except StepAborted as exc:  # pragma: no cover - the failure this test looks for
            errors.append(exc)

    with switch.arm(True):
        assert switch.armed
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert not errors  # another thread's forward through the same hooks is not stopped
        with pytest.raises(StepAborted):
            tiny.model(ids)
    assert not switch.armed
    switch.clear()
    with switch.arm(True):
        tiny.model(ids)  # nothing pending: runs
