"""The engine's request intake (`Engine.tokenize` / `generate`): text that cannot be encoded and prompts that
cannot fit in the context are refused with a `ValueError("prompt: ...")` for that request alone, and a prompt
far too long is refused before the tokenizer reads it whole."""

from __future__ import annotations

import asyncio

import pytest

from backend import ContextLengthError, SamplingParams

HUGE = "lorem ipsum " * 400_000  # 4.8 MB: random:tiny's 2048 positions hold at most 2048 * 13 characters


async def _collect(engine, prompt, params):
    return [out async for out in engine.generate(prompt, params)]


def await_first(engine, prompt):
    """The first output of `engine.generate(prompt)` (where its intake errors are raised)."""
    return asyncio.run(anext(aiter(engine.generate(prompt))))


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


@pytest.fixture
def tokenizer_calls(tiny, monkeypatch):
    """The length (characters) of every text the tokenizer of `random:tiny` is asked to encode."""
    cls = type(tiny.tokenizer)
    calls: list[int] = []
    real_call, real_encode = cls.__call__, cls.encode

    def spy_call(self, text=None, *args, **kwargs):
        calls.append(len(text) if isinstance(text, str) else -1)
        return real_call(self, text, *args, **kwargs)

    def spy_encode(self, text, *args, **kwargs):
        calls.append(len(text) if isinstance(text, str) else -1)
        return real_encode(self, text, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", spy_call)
    monkeypatch.setattr(cls, "encode", spy_encode)
    return calls


@pytest.mark.parametrize("prompt", [HUGE, [{"role": "system", "content": "be brief"},
                                           {"role": "user", "content": HUGE}]], ids=["text", "chat"])
def test_a_prompt_that_cannot_fit_is_refused_without_tokenizing_it(make_engine, tokenizer_calls, prompt):
    engine = make_engine()
    with pytest.raises(ContextLengthError, match=r"^prompt: .*cannot fit in the context of 2048 tokens"):
        engine.tokenize(prompt)
    bad, good = engine.generate_batch([prompt, "fine"], SamplingParams(max_tokens=3, ignore_eos=True))
    assert bad.finish_reason == "error" and "max_model_len" in bad.error
    assert (good.finish_reason, good.completion_tokens) == ("length", 3)
    assert tokenizer_calls and max(tokenizer_calls) < 1000  # "fine" was tokenized; the huge prompt never


def test_a_prompt_under_the_character_bound_is_still_measured_in_tokens(make_engine, tokenizer_calls):
    engine = make_engine()
    result, = engine.generate_batch(["x" * 10_000])  # within 2048 * 13 characters: tokenized, then measured
    assert result.finish_reason == "error" and result.error.startswith("prompt: 10000 tokens leave no room")
    with pytest.raises(ContextLengthError, match=r"^prompt: 10000 tokens leave no room"):
        await_first(engine, "x" * 10_000)
    assert 10_000 in tokenizer_calls


def test_the_character_bound_is_the_longest_token_and_only_where_it_holds(tiny):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from backend.intake import max_token_chars

    assert max_token_chars(tiny.tokenizer) == max(len(t) for t in tiny.tokenizer.get_vocab())

    def fast(model, normalizer=None, pre_tokenizer=None):
        core = Tokenizer(model)
        if normalizer is not None:
            core.normalizer = normalizer
        if pre_tokenizer is not None:
            core.pre_tokenizer = pre_tokenizer
        return PreTrainedTokenizerFast(tokenizer_object=core)

    vocab = {"[UNK]": 0, "a": 1, "b": 2}
    # One token can stand for any number of characters: a whole unknown word, dropped whitespace, a
    # normalizer that shrinks the text. No bound then: such prompts are measured by tokenizing, as before.
    assert max_token_chars(fast(models.WordLevel(vocab, unk_token="[UNK]"))) is None
    assert max_token_chars(fast(models.BPE({"a": 0, "b": 1}, []), pre_tokenizer=pre_tokenizers.Whitespace())) is None
    assert max_token_chars(fast(models.BPE({"a": 0, "b": 1}, []), normalizer=normalizers.NFKC())) is None
    assert max_token_chars(fast(models.BPE({"a": 0, "ab": 1, "b": 2}, [("a", "b")]),
                                pre_tokenizer=pre_tokenizers.ByteLevel())) == 2
