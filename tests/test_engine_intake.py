"""The engine's request intake (`Engine.tokenize` / `generate`): text that cannot be encoded is refused with a
`ValueError("prompt: ...")` for that request alone."""

from __future__ import annotations

import pytest

from backend import SamplingParams


async def _collect(engine, prompt, params):
    return [out async for out in engine.generate(prompt, params)]


@pytest.mark.parametrize("prompt", ["hi \ud83d", [{"role": "user", "content": "a\udc80b"}],
                                    [{"role": "system", "content": "ok"}, {"role": "us\ud800er", "content": "x"}]],
                         ids=["text", "content", "role"])
async def test_a_lone_surrogate_in_a_prompt_is_a_value_error_for_that_request_alone(make_engine, prompt):
    engine = make_engine()
    with pytest.raises(ValueError, match=r"^prompt: .*not valid UTF-8 text"):
        engine.tokenize(prompt)
    with pytest.raises(ValueError, match=r"^prompt: .*not valid UTF-8 text"):
        await _collect(engine, prompt, SamplingParams(max_tokens=2))
    bad, good = engine.generate_batch([prompt, "fine"], SamplingParams(max_tokens=3, ignore_eos=True))
    assert bad.finish_reason == "error" and "UTF-8" in bad.error
    assert (good.finish_reason, good.completion_tokens) == ("length", 3)


def test_a_stop_string_with_a_lone_surrogate_is_a_value_error():
    with pytest.raises(ValueError, match=r"^stop: .*not valid UTF-8 text"):
        SamplingParams(stop=["ok", "\udfff"])
