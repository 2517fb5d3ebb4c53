"""Engine behaviour through its public API: errors stay with their request, cancel, limits, stop strings."""

from __future__ import annotations

import asyncio
import threading

import pytest

from backend import Engine, EngineConfig, Priority, SamplingParams
from backend.detokenizer import IncrementalDetokenizer
from conftest import queued, until


async def _collect(engine, prompt, params, **kw):
    outs = [o async for o in engine.generate(prompt, params, **kw)]
    return outs, "".join(o.text for o in outs)


@pytest.mark.parametrize("field,value", [("temperature", -0.5), ("top_p", 0.0), ("top_p", 1.5),
                                         ("top_k", -2), ("max_tokens", 0), ("seed", "x"),
                                         ("stop", [""]), ("ignore_eos", "yes"), ("seed", 2**64)])
def test_invalid_sampling_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        SamplingParams(**{field: value})


def test_tiny_temperature_decodes_greedily(make_engine):
    engine = make_engine()
    greedy = engine.generate_batch(["hello world"], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    tiny_t = engine.generate_batch(["hello world"], SamplingParams(max_tokens=8, temperature=1e-45, seed=1,
                                                                    ignore_eos=True))
    assert greedy[0].token_ids == tiny_t[0].token_ids


def test_invalid_engine_config_names_the_field():
    with pytest.raises(ValueError, match="^max_batch_size:"):
        EngineConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="^device:"):
        EngineConfig(device="tpu")
    with pytest.raises(ValueError, match="^max_background_prefill_tokens:"):
        EngineConfig(max_background_prefill_tokens=0)


async def test_bad_prompts_fail_alone_and_the_engine_keeps_serving(make_engine):
    engine = make_engine(max_model_len=64)
    good = asyncio.create_task(_collect(engine, "hello", SamplingParams(max_tokens=20, ignore_eos=True)))
    with pytest.raises(ValueError, match="prompt: must not be empty"):
        await _collect(engine, "   ", SamplingParams())
    with pytest.raises(ValueError, match="max_model_len"):
        await _collect(engine, "x" * 200, SamplingParams())
    with pytest.raises(ValueError, match="token ids"):
        await _collect(engine, [1, -5], SamplingParams())
    with pytest.raises(ValueError, match="priority"):
        await _collect(engine, "hi", SamplingParams(), priority=7)
    outs, _ = await good
    assert outs[-1].finish_reason == "length" and outs[-1].completion_tokens == 20


async def test_max_model_len_caps_generation(make_engine):
    engine = make_engine(max_model_len=24)
    prompt = list(range(3, 19))  # 16 tokens
    outs, _ = await _collect(engine, prompt, SamplingParams(max_tokens=100, ignore_eos=True))
    assert outs[-1].finish_reason == "length"
    assert outs[-1].prompt_tokens + outs[-1].completion_tokens == 24


async def test_cancel_keeps_partial_output_and_frees_the_row(make_engine):
    engine = make_engine()
    seen = []
    async for out in engine.generate("tell me", SamplingParams(max_tokens=1900, ignore_eos=True),
                                     request_id="r1"):
        seen.append(out)
        if len(seen) == 5:
            assert engine.cancel("r1") is True
    assert seen[-1].finish_reason == "cancelled"
    assert 5 <= seen[-1].completion_tokens < 1900
    assert engine.cancel("r1") is False  # already finished
    with pytest.raises(KeyError, match="unknown request id"):
        engine.cancel("never-seen")
    await asyncio.sleep(0.05)
    stats = engine.stats()
    assert stats.batch_size == 0 and stats.kv_cache_bytes == 0
    assert stats.counters["num_requests_cancelled"] == 1


async def test_a_cancelled_row_is_freed_and_its_stream_ends_within_one_step(make_engine, decode_gate):
    """Issue #10.5: the final output of a request cancelled between two steps used to wait for the end of the
    next iteration (the other rows' decode step, or a prefill: seconds on a CPU) before it was sent."""
    engine = make_engine()
    both = decode_gate(engine, lambda batch: batch.size == 2)
    params = SamplingParams(max_tokens=1900, ignore_eos=True)
    outs: dict[str, list] = {"a": [], "b": []}

    async def consume(rid: str) -> None:
        async for out in engine.generate(f"talk {rid}", params, request_id=rid):
            outs[rid].append(out)

    tasks = [asyncio.create_task(consume(rid)) for rid in outs]
    await both.parked()  # a decode step of both rows is in flight
    assert engine.cancel("a") is True
    await queued(engine)
    alone = decode_gate(engine, lambda batch: batch.size == 1)  # parks the next decode: "b" alone
    both.release()
    await alone.parked()  # the step in flight ended, the cancel was applied, "b" decodes again
    await until(lambda: outs["a"] and outs["a"][-1].finished, what="the cancelled stream's end before b's next step")
    assert outs["a"][-1].finish_reason == "cancelled" and [r.request_id for r in engine.stats().rows] == ["b"]
    alone.release()
    engine.cancel("b")
    await asyncio.gather(*tasks)


async def test_a_request_that_ends_at_its_first_token_hears_it_before_the_other_rows_decode(make_engine, decode_gate):
    """A request that ends in the iteration's plan (here at its first token, `max_tokens=1`) used to get its
    final output only after the rest of the iteration, the other rows' decode step (70-140 ms of every one-token
    chat's TTFT beside a job on this CPU, `benchmarks/chat_arrival.py`). The decode step is parked: the output
    must arrive meanwhile, with stats that already count the request finished."""
    engine = make_engine()
    finished = lambda: engine._core.window.counters.get("num_requests_finished", 0)  # noqa: E731
    job = engine.generate("a long job", SamplingParams(max_tokens=1900, ignore_eos=True), Priority.BATCH, "job")
    await job.__anext__()
    base = finished()
    gate = decode_gate(engine, lambda batch: finished() > base)  # the decode step after "one" finished
    outs = []

    async def consume() -> None:
        async for out in engine.generate("a one-token turn", SamplingParams(max_tokens=1, ignore_eos=True),
                                         Priority.INTERACTIVE, "one"):
            outs.append(out)

    task = asyncio.create_task(consume())
    await gate.parked()  # the job's decode step of the iteration that prefilled "one" has not run
    await until(lambda: outs and outs[-1].finished, what="the one-token request's output while the job decodes")
    assert outs[-1].finish_reason == "length" and outs[-1].token_id is not None and outs[-1].completion_tokens == 1
    assert engine.stats().counters["num_requests_finished"] == base + 1
    gate.release()
    await task
    await job.aclose()


async def test_leaving_the_stream_early_cancels_the_request(make_engine):
    engine = make_engine()
    async for out in engine.generate("tell me", SamplingParams(max_tokens=1900, ignore_eos=True)):
        if out.completion_tokens == 3:
            break
    for _ in range(2000):
        if engine.stats().counters.get("num_requests_cancelled"):
            break
        await asyncio.sleep(0.01)
    assert engine.stats().counters["num_requests_cancelled"] == 1
    assert engine.stats().batch_size == 0


async def test_duplicate_live_request_id_is_rejected(make_engine):
    engine = make_engine()
    first = engine.generate("a", SamplingParams(max_tokens=1900, ignore_eos=True), request_id="dup")
    await first.__anext__()
    with pytest.raises(ValueError, match="request_id"):
        await _collect(engine, "b", SamplingParams(), request_id="dup")
    await first.aclose()


async def test_prompts_are_tokenized_off_the_event_loop(make_engine):
    """Rendering a chat template takes milliseconds; on the loop it would stall every other stream there."""
    engine = make_engine()
    threads, real = [], engine._make_request

    def make_request(*args):
        threads.append(threading.get_ident())
        return real(*args)

    engine._make_request = make_request
    outs, _ = await _collect(engine, [{"role": "user", "content": "hi"}], SamplingParams(max_tokens=2))
    assert outs[-1].finish_reason is not None
    assert threads and threading.get_ident() not in threads


async def test_a_caller_that_leaves_while_its_prompt_is_tokenized_leaves_no_live_request(make_engine):
    engine = make_engine()
    entered, release, made = threading.Event(), threading.Event(), threading.Event()
    real = engine._make_request

    def slow_make_request(*args):
        entered.set()
        release.wait(10)
        try:
            return real(*args)
        finally:
            made.set()

    engine._make_request = slow_make_request
    task = asyncio.create_task(_collect(engine, "hello", SamplingParams(max_tokens=2), request_id="left"))
    assert await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    engine._make_request = real
    assert await asyncio.to_thread(made.wait, 10)  # the worker thread made (and registered) the request
    for _ in range(500):  # ... and the loop drops it
        if "left" not in engine._live:
            break
        await asyncio.sleep(0.01)
    assert "left" not in engine._live
    outs, _ = await _collect(engine, "hello", SamplingParams(max_tokens=2), request_id="left")  # the id is free
    assert outs[-1].finish_reason == "length"


async def test_stop_string_ends_the_request_and_is_not_emitted(make_engine):
    engine = make_engine()
    base = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    _, text = await _collect(engine, "The quick brown fox", base)
    stop = text[10:13]
    assert len(stop) == 3
    outs, stopped = await _collect(engine, "The quick brown fox",
                                   SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, stop=[stop]))
    assert outs[-1].finish_reason == "stop"
    assert stopped == text[:text.index(stop)]


def test_stats_tell_the_truth_before_the_first_request(make_engine):
    """The live panel reads stats from the start: an engine that has served nothing yet must not say that its
    prefix cache is off or that it has no KV budget (it published an empty snapshot until its first step)."""
    stats = make_engine(max_batch_size=2, prefix_cache_bytes=2**20, kv_budget_bytes=2**24).stats()
    assert (stats.model, stats.device) == ("random:tiny", "cpu")
    assert stats.prefix_cache_capacity_bytes == 2**20 and stats.kv_budget_bytes == 2**24
    assert stats.batch_size == 0 and stats.queue_depth == 0 and stats.output_tokens_per_s == 0


async def test_stats_report_rows_priorities_and_kv_bytes(make_engine, decode_gate):
    engine = make_engine(max_batch_size=2)
    # the engine parks once `c` has waited through one iteration, whose stats are then published
    gate = decode_gate(engine, lambda batch: len(engine._core.scheduler) == 1, skip=1)
    params = SamplingParams(max_tokens=1500, ignore_eos=True)
    streams = [engine.generate("one", params, Priority.INTERACTIVE, "a"),
               engine.generate("two", params, Priority.AGENT, "b"),
               engine.generate("three", params, Priority.AGENT, "c")]
    await streams[0].__anext__()
    await streams[1].__anext__()
    task = asyncio.create_task(streams[2].__anext__())  # queued: 2 rows, and no lower-priority row to preempt
    await gate.parked()
    stats = engine.stats()
    gate.release()
    assert {r.request_id: r.priority for r in stats.rows} == {"a": "interactive", "b": "agent"}
    assert [r.request_id for r in stats.waiting] == ["c"] and stats.queue_depth == 1
    assert stats.rows_by_state() == {"running": 2, "waiting": 1, "swapped": 0, "prefilling": 0}
    assert all(r.state == "running" and r.generated >= 1 for r in stats.rows)
    assert stats.kv_window_bytes >= stats.kv_used_bytes > 0 and stats.kv_cache_bytes >= stats.kv_window_bytes
    assert stats.num_decode_steps > 0 and stats.output_tokens_per_s > 0
    for s in streams[:2]:
        await s.aclose()
    await task
    await streams[2].aclose()


def test_a_failing_prefill_fails_only_that_request(make_engine, monkeypatch):
    """The prompts are admitted together (one packed prefill forward); the forward fails because of one of
    them; each is retried alone and only that one fails."""
    engine = make_engine()
    boom = engine.tokenize("BOOM")[:2]
    model = engine._core.runner.model
    real_forward = model.forward

    def flaky(*args, input_ids=None, **kwargs):
        ids = input_ids[0].tolist()
        if any(ids[i:i + 2] == boom for i in range(len(ids) - 1)):
            raise RuntimeError("simulated device fault")
        return real_forward(*args, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(model, "forward", flaky)
    good, bad, other = engine.generate_batch(["fine", "BOOM", "also fine"],
                                             [SamplingParams(max_tokens=30, ignore_eos=True),
                                              SamplingParams(max_tokens=10),
                                              SamplingParams(max_tokens=5, ignore_eos=True)])
    assert bad.finish_reason == "error" and "simulated device fault" in bad.error and bad.completion_tokens == 0
    assert (good.finish_reason, good.completion_tokens) == ("length", 30)
    assert (other.finish_reason, other.completion_tokens) == ("length", 5)
    counters = engine.stats().counters
    assert counters["num_prefills"] == 2 and counters["num_prefill_forwards"] == 2  # both retried alone


def test_generate_before_start_and_after_shutdown_is_a_clear_error(tiny):
    engine = Engine(EngineConfig(model="random:tiny"), loaded=tiny)
    with pytest.raises(RuntimeError, match="start"):
        engine.generate_batch(["hi"])
    engine.start()
    engine.shutdown()
    with pytest.raises(RuntimeError, match="not running"):
        engine.generate_batch(["hi"])


def test_detokenizer_holds_back_partial_utf8_and_stop_prefixes(tiny):
    tok = tiny.tokenizer
    text = "héllo 👋 wörld, stop here"
    ids = tok(text).input_ids
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.add(i) for i in ids]
    assert "".join(deltas) + detok.flush() == text
    assert not any("\ufffd" in d for d in deltas)
    detok = IncrementalDetokenizer(tok, stop=("stop",))
    out = ""
    for i in ids:
        out += detok.add(i)
        assert "sto" not in out  # held back until ruled in or out
        if detok.stopped:
            break
    assert detok.stopped and out == "héllo 👋 wörld, "


def test_an_engine_fault_during_admission_fails_the_admitted_requests_and_the_engine_goes_on(make_engine,
                                                                                             monkeypatch):
    """A bug between prefill and insert must not lose requests (they would hang their callers)."""
    engine = make_engine()
    window = engine._core.window
    real = window.prefill

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(window, "prefill", broken)
    results = engine.generate_batch(["one", "two"], SamplingParams(max_tokens=5))
    assert [r.finish_reason for r in results] == ["error", "error"]
    assert all("simulated bug" in r.error for r in results)
    monkeypatch.setattr(window, "prefill", real)
    again = engine.generate_batch(["three"], SamplingParams(max_tokens=5, ignore_eos=True))
    assert (again[0].finish_reason, again[0].completion_tokens) == ("length", 5)


async def test_a_prompt_cancelled_between_prefill_chunks_ends_without_tokens(make_engine):
    """Chunked prefill: between chunks the request waits in the queue as `prefilling`; a cancel then drops it
    (and its partial K/V) before any further chunk or token."""
    engine = make_engine(max_prefill_tokens=16)
    runner = engine._core.runner
    real = runner.prefill_chunk
    calls, release = [], threading.Event()

    def gated(*args):
        calls.append(args[1])  # start position of the chunk
        if len(calls) == 2:
            release.wait(10)  # hold the engine inside the second chunk until the cancel is queued
        return real(*args)

    runner.prefill_chunk = gated
    prompt = list(range(3, 103))  # 100 tokens: 7 chunks of up to 16
    task = asyncio.create_task(_collect(engine, prompt, SamplingParams(max_tokens=5), request_id="long"))
    for _ in range(2000):  # parked inside chunk 2, after chunk 1's iteration published its stats
        if len(calls) == 2 and [r.state for r in engine.stats().waiting if r.request_id == "long"] == ["prefilling"]:
            assert engine.stats().rows_by_state()["prefilling"] == 1
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("never seen between two chunks")
    assert engine.cancel("long") is True
    release.set()
    outs, _ = await task
    assert outs[-1].finish_reason == "cancelled" and outs[-1].completion_tokens == 0
    assert calls == [0, 16]  # no chunk after the cancel
    await asyncio.sleep(0.05)
    stats = engine.stats()
    assert not stats.rows and not stats.waiting and stats.counters["num_prefill_chunks"] == 2
