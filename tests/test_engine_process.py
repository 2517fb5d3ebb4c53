"""`EngineProcess`: the engine core in a spawned child process, behind `Engine`'s API (`backend/engine_proc.py`).

One child serves most tests (spawning one imports torch and transformers again: seconds); the test that kills
its child has its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sys

import pytest

from backend import (ContextLengthError, Engine, EngineConfig, EngineProcess, ModelInfo, ModelLoadError, Priority,
                     SamplingParams, make_engine)
from serve_support import wait_for

PROMPTS = ["hello there", "a b c d e f", "xyz", [{"role": "user", "content": "hi, how are you?"}]]


def _wait_for(condition, what: str):
    return wait_for(condition, what, timeout=60.0)


@pytest.fixture(scope="module")
def proc_engine():
    engine = EngineProcess(EngineConfig(model="random:tiny", device="cpu", max_batch_size=4)).start()
    yield engine
    engine.shutdown()


def test_outputs_equal_the_in_process_engine(proc_engine, make_engine):
    """Greedy rows, a seeded sampled row and a stop string give the same tokens and text as `Engine`."""
    params = [SamplingParams(max_tokens=12, temperature=0, ignore_eos=True),
              SamplingParams(max_tokens=10, temperature=0.9, top_p=0.8, seed=7, ignore_eos=True),
              SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, stop=["zz"]),
              SamplingParams(max_tokens=9, temperature=0, ignore_eos=True)]
    here = make_engine(max_batch_size=4).generate_batch(PROMPTS, params)
    there = proc_engine.generate_batch(PROMPTS, params)
    assert [(r.token_ids, r.text, r.finish_reason, r.prompt_tokens) for r in there] == \
        [(r.token_ids, r.text, r.finish_reason, r.prompt_tokens) for r in here]
    assert all(r.completion_tokens > 0 for r in there)


def test_streams_and_cancels(proc_engine):
    async def run():
        seen, last = [], None
        stream = proc_engine.generate("stream me", SamplingParams(max_tokens=1500, temperature=0, ignore_eos=True))
        async for out in stream:
            seen.append(out.token_id)
            if len(seen) == 3:
                assert proc_engine.cancel(out.request_id) is True
            last = out
        return seen, last

    seen, last = asyncio.run(run())
    assert last.finish_reason == "cancelled" and last.completion_tokens < 1500
    assert proc_engine.cancel(last.request_id) is False  # finished now
    with pytest.raises(KeyError):
        proc_engine.cancel("never-seen")


def test_leaving_the_stream_cancels_in_the_child(proc_engine):
    async def run():
        stream = proc_engine.generate("leave early", SamplingParams(max_tokens=1500, temperature=0, ignore_eos=True),
                                      request_id="leaver")
        async with contextlib.aclosing(stream):  # as the app's consumers leave a stream
            async for _ in stream:
                break

    asyncio.run(run())
    _wait_for(lambda: "leaver" not in {r.request_id for r in proc_engine.stats().rows} and
              proc_engine.cancel("leaver") is False, "the left request to end in the child")


def test_bad_input_is_refused_in_the_parent(proc_engine):
    async def too_long():
        async for _ in proc_engine.generate("x " * 3000, SamplingParams(max_tokens=2)):
            pass

    with pytest.raises(ContextLengthError):
        asyncio.run(too_long())
    result = proc_engine.generate_batch(["x " * 3000], SamplingParams(max_tokens=2))[0]
    assert result.finish_reason == "error" and "context" in result.error

    async def bad():
        async for _ in proc_engine.generate("hi", SamplingParams(max_tokens=2), priority=7):
            pass

    with pytest.raises(ValueError, match="priority"):
        asyncio.run(bad())
    with pytest.raises(ValueError, match="token ids"):
        proc_engine.tokenize([1, 2, 10**9])


def test_model_stats_and_memory_come_from_the_child(proc_engine):
    info = proc_engine.model
    assert isinstance(info, ModelInfo) and info.name == "random:tiny" and info.device == "cpu"
    assert info.pid != os.getpid() and proc_engine.max_model_len == 2048
    assert proc_engine.tokenize("hello") == info.tokenizer("hello").input_ids
    proc_engine.generate_batch(["count me"], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True),
                               priority=Priority.BATCH)
    stats = _wait_for(lambda: (s := proc_engine.stats()).counters.get("num_generated_tokens", 0) >= 5 and s,
                      "stats from the child")
    assert stats.model == "random:tiny"
    memory = _wait_for(proc_engine.memory, "a memory reading")
    assert memory.kind == "cpu" and memory.process_rss_bytes > 0


def test_a_dead_child_fails_its_requests_and_stops_the_engine():
    engine = EngineProcess(EngineConfig(model="random:tiny", device="cpu", max_batch_size=2)).start()
    try:
        async def run():
            outs = []
            async for out in engine.generate("doomed", SamplingParams(max_tokens=1500, temperature=0,
                                                                       ignore_eos=True)):
                outs.append(out)
                if len(outs) == 2:
                    os.kill(engine.model.pid, signal.SIGKILL)
            return outs

        outs = asyncio.run(run())
        assert outs[-1].finish_reason == "error" and "engine process exited" in outs[-1].error
        _wait_for(lambda: not engine.started, "the engine to report it stopped")
        with pytest.raises(RuntimeError, match="not running"):
            engine.generate_batch(["after"], SamplingParams(max_tokens=2))[0]  # rejected: reported in the result
    finally:
        engine.shutdown(timeout=5)


def test_shutdown_cancels_unfinished_requests():
    engine = EngineProcess(EngineConfig(model="random:tiny", device="cpu", max_batch_size=2)).start()
    finals = []

    async def run():
        async for out in engine.generate("long", SamplingParams(max_tokens=1500, temperature=0, ignore_eos=True)):
            if out.completion_tokens == 2:
                await asyncio.to_thread(engine.shutdown)
            if out.finished:
                finals.append(out)

    asyncio.run(run())
    assert finals[0].finish_reason == "cancelled" and not engine.started
    engine.shutdown()  # idempotent


def test_start_failures_raise_in_the_parent():
    with pytest.raises(ModelLoadError, match="unknown random preset .no-such."):
        EngineProcess(EngineConfig(model="random:no-such", device="cpu")).start()


def test_make_engine_picks_the_class():
    assert type(make_engine(EngineConfig(model="random:tiny"))) is Engine
    assert type(make_engine(EngineConfig(model="random:tiny", process=True))) is EngineProcess
    with pytest.raises(ValueError, match="process"):
        Engine(EngineConfig(model="random:tiny", process=True))
    with pytest.raises(ValueError, match="threads"):
        EngineConfig(threads=0)


class _CapturedStderr(io.StringIO):
    """What a TUI puts in `sys.stderr` while it runs (Textual's print capture: no file descriptor)."""

    def fileno(self) -> int:
        return -1


def test_starts_under_a_captured_stderr_and_writes_its_output_to_the_log(tmp_path, monkeypatch):
    """`baton`'s TUI makes its engine while Textual captures stderr: spawning used to fail there with
    "bad value(s) in fds_to_keep" (multiprocessing passes `sys.stderr.fileno()` on)."""
    log = tmp_path / "engine.log"
    monkeypatch.setattr(sys, "stderr", _CapturedStderr())
    engine = EngineProcess(EngineConfig(model="random:tiny", device="cpu", max_batch_size=2), log_file=log).start()
    try:
        assert engine.generate_batch(["hi"], SamplingParams(max_tokens=3, temperature=0,
                                                            ignore_eos=True))[0].completion_tokens == 3
        assert log.exists()  # the child's stdout and stderr, not the terminal the TUI draws on
    finally:
        engine.shutdown()
