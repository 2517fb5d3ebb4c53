"""Greedy output of every request equals its solo `model.generate` output, whatever joins or leaves the batch."""

from __future__ import annotations

import asyncio
import time

import pytest

from backend import Priority, SamplingParams
from backend.engine import AddRequests
from conftest import queued, solo_greedy, use_static_step

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves falling on a quiet pond.",
    "Hi",
    "Explain, in two sentences, why the sky is blue during the day and red at sunset.",
    "List three prime numbers.",
    "Translate 'good morning' into Spanish, French and German, one per line.",
]


async def _staggered(engine, prompts, params, wait_tokens):
    """Submit prompt i once the previous request has streamed `wait_tokens[i]` tokens; collect token ids."""
    results: dict[int, list[int]] = {}
    progress = [asyncio.Event() for _ in prompts]

    async def run(i):
        ids, seen = [], 0
        async for out in engine.generate(prompts[i], params[i], priority=Priority.BATCH):
            if out.token_id is not None:
                ids.append(out.token_id)
                seen += 1
            if i + 1 < len(prompts) and seen >= wait_tokens[i + 1]:
                progress[i + 1].set()
        progress[min(i + 1, len(prompts) - 1)].set()
        results[i] = ids

    async def launch(i):
        if i:
            await progress[i].wait()
        await run(i)

    await asyncio.gather(*(launch(i) for i in range(len(prompts))))
    return [results[i] for i in range(len(prompts))]


def _chat_ids(engine, q):
    return engine.tokenize([{"role": "user", "content": q}])


@pytest.fixture(params=["window", "static"])
def decode_path(request):
    """Decode over the window (`compile="off"`) and through the static step that the compiled modes compile or
    capture, run eagerly (`backend/static_step.py`; `static-eager` is a runner-only mode)."""
    return request.param


def _on_path(engine, decode_path: str):
    if decode_path == "static":
        use_static_step(engine)  # the engine is idle: no step in flight
    return engine


async def test_greedy_matches_solo_generate_on_tiny_model(make_engine, tiny, attention_mode, decode_path):
    """Rows join at different steps, leave at different lengths, and the batch (size 3 < 6) forces waits."""
    engine = _on_path(make_engine(max_batch_size=3), decode_path)
    prompts = [_chat_ids(engine, q) for q in QUESTIONS]
    lengths = [40, 12, 33, 7, 25, 18]
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in lengths]
    got = await _staggered(engine, prompts, params, wait_tokens=[0, 3, 0, 5, 1, 9])
    for i, (p, n) in enumerate(zip(prompts, lengths)):
        assert got[i] == solo_greedy(tiny, p, n), f"request {i} diverged"
    counters = engine.stats().counters
    assert counters["num_inserts"] == 6 and counters["num_removes"] == 6
    assert counters["num_decode_steps"] < sum(n - 1 for n in lengths)  # rows really shared decode steps


def test_generate_batch_greedy_matches_solo_with_many_rows(make_engine, tiny, decode_path):
    engine = _on_path(make_engine(max_batch_size=4), decode_path)
    prompts = [list(range(3 + i, 3 + i + 5 * (i % 5) + 1)) for i in range(10)]
    params = [SamplingParams(max_tokens=5 + 3 * i, temperature=0, ignore_eos=True) for i in range(10)]
    results = engine.generate_batch(prompts, params)
    for i, r in enumerate(results):
        assert r.finish_reason == "length" and r.completion_tokens == params[i].max_tokens
        assert r.token_ids == solo_greedy(tiny, prompts[i], params[i].max_tokens)


def test_newcomers_admitted_together_share_one_packed_prefill(make_engine, tiny):
    """`generate_batch` submits every prompt at once: one packed prefill forward for all of them (prompts of
    different lengths, one a single token), and each output still equals its solo output."""
    engine = make_engine(max_batch_size=8)
    prompts = [_chat_ids(engine, q) for q in QUESTIONS] + [[17]]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    results = engine.generate_batch(prompts, params)
    for p, r in zip(prompts, results):
        assert r.token_ids == solo_greedy(tiny, p, 12)
    counters = engine.stats().counters
    assert (counters["num_prefills"], counters["num_prefill_forwards"]) == (7, 1)
    assert counters["num_prompt_tokens"] == sum(map(len, prompts))


def test_packed_prefill_respects_the_prefill_token_budget_and_priority_classes(make_engine, tiny):
    """Newcomers are packed up to `max_prefill_tokens` per iteration; an interactive prompt is never packed
    with background ones (its first token does not wait for their prompts)."""
    engine = make_engine(max_batch_size=8, max_prefill_tokens=40)
    prompts = [list(range(5 + i, 25 + i)) for i in range(4)]  # 20 tokens each: two per forward
    results = engine.generate_batch(prompts, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
    assert [r.token_ids for r in results] == [solo_greedy(tiny, p, 6) for p in prompts]
    counters = engine.stats().counters
    assert (counters["num_prefills"], counters["num_prefill_forwards"]) == (4, 2)

    sent = []
    real = engine._core.runner.prefill_packed
    engine._core.runner.prefill_packed = lambda ps: (sent.append(len(ps)), real(ps))[1]
    short = [p[:10] for p in prompts]  # 30 tokens in all: within the budget
    batch = [engine._make_request(p, SamplingParams(max_tokens=3), Priority.BATCH, None, lambda o: None)
             for p in short[:2]]
    chat = engine._make_request(short[3], SamplingParams(max_tokens=3), Priority.INTERACTIVE, None,
                                lambda o: None)
    engine._inbox.put(AddRequests((*batch, chat)))
    for _ in range(200):
        if not engine.stats().rows and engine.stats().counters["num_prefills"] == 7:
            break
        time.sleep(0.02)
    assert sent == [1, 2]  # the interactive prompt first and alone, then the two background ones together


@pytest.mark.real_model
async def test_greedy_matches_solo_generate_on_default_model(make_engine, real, attention_mode, decode_path):
    engine = _on_path(make_engine(loaded=real, max_batch_size=2), decode_path)
    prompts = [_chat_ids(engine, q) for q in QUESTIONS[:4]]
    lengths = [24, 10, 20, 14]
    params = [SamplingParams(max_tokens=n, temperature=0) for n in lengths]
    got = await _staggered(engine, prompts, params, wait_tokens=[0, 4, 0, 2])
    for i, (p, n) in enumerate(zip(prompts, lengths)):
        assert got[i] == solo_greedy(real, p, n), f"request {i} diverged"


@pytest.mark.real_model
def test_packed_prefill_matches_solo_generate_on_default_model(make_engine, real):
    engine = make_engine(loaded=real, max_batch_size=4)
    prompts = [_chat_ids(engine, q) for q in QUESTIONS[:4]]
    results = engine.generate_batch(prompts, SamplingParams(max_tokens=20, temperature=0))
    for i, (p, r) in enumerate(zip(prompts, results)):
        assert r.token_ids == solo_greedy(real, p, 20)[:len(r.token_ids)], f"request {i} diverged"
        assert r.finish_reason == "stop" or r.completion_tokens == 20
    assert engine.stats().counters["num_prefill_forwards"] == 1


async def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(make_engine, decode_gate, tiny):
    """A prompt over `max_prefill_tokens` is prefilled a chunk per iteration while the running row keeps
    decoding (one step between chunks), and both outputs still equal their solo outputs."""
    engine = make_engine(max_batch_size=4, max_prefill_tokens=16)
    gate = decode_gate(engine)  # the long prompt is sent while the short row waits for its first decode step
    short, long = list(range(5, 15)), [3 + (7 * i) % 200 for i in range(70)]  # 70 tokens: chunks 16x4 + 6
    greedy = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)

    async def run(prompt, params):
        return [o async for o in engine.generate(prompt, params, priority=Priority.BATCH) if o.token_id is not None]

    short_run = asyncio.create_task(run(short, greedy))
    await gate.parked()
    long_run = asyncio.create_task(run(long, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)))
    await queued(engine)
    gate.release()
    short_outs, long_outs = await asyncio.gather(short_run, long_run)
    assert [o.token_id for o in short_outs] == solo_greedy(tiny, short, 40)
    assert [o.token_id for o in long_outs] == solo_greedy(tiny, long, 12)
    counters = engine.stats().counters
    assert counters["num_prefill_chunks"] == 5 and counters["num_prefills"] == 2
    # one decode step of the short row between every two chunks: the long prompt's first token came at
    # least 4 steps after the engine received it (all at once, it would have come at the next step)
    arrived, first_long_step = long_outs[0].arrival_step, long_outs[0].engine_step
    assert first_long_step - arrived >= 4
    short_steps = {o.engine_step for o in short_outs}
    assert set(range(arrived, first_long_step)) <= short_steps  # the short row never stalled


async def test_background_prompts_are_chunked_finer_while_a_chat_is_decoding(make_engine, decode_gate, tiny):
    """`max_background_prefill_tokens`: while an interactive row decodes, a batch prompt is prefilled in chunks
    of that budget (the chat waits at most that long per token); with no chat running it goes in whole (the
    prefix cache is off: the second run would start from the first one's blocks)."""
    engine = make_engine(max_batch_size=4, max_background_prefill_tokens=16, prefix_cache_bytes=0)
    gate = decode_gate(engine)  # the background prompt is sent while the chat waits for its first decode step
    chat, background = list(range(5, 15)), [3 + (7 * i) % 200 for i in range(100)]

    async def run_chat():
        return [o.token_id async for o in engine.generate(
            chat, SamplingParams(max_tokens=60, temperature=0, ignore_eos=True), priority=Priority.INTERACTIVE)]

    async def run_background():
        await gate.parked()
        job = asyncio.create_task(asyncio.to_thread(
            engine.generate_batch, [background], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)))
        await queued(engine)
        gate.release()
        return (await job)[0].token_ids

    got_chat, got_background = await asyncio.gather(run_chat(), run_background())
    assert got_chat == solo_greedy(tiny, chat, 60) and got_background == solo_greedy(tiny, background, 8)
    assert engine.stats().counters["num_prefill_chunks"] == 7  # 100 tokens in chunks of 16
    engine.generate_batch([background], SamplingParams(max_tokens=2, ignore_eos=True))  # no chat now
    assert engine.stats().counters["num_prefill_chunks"] == 7  # prefilled whole
