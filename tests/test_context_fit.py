"""A chat longer than the context: old turns are left out with slack, so later turns keep the same prefix."""

from __future__ import annotations

import pytest

from app.chat.context_fit import ContextOverflow, fit_to_context


def _count(messages):
    return sum(len(m["content"]) for m in messages)  # one token per character


def _chat(turns: int, size: int = 10):
    out = [{"role": "system", "content": "s" * 5}]
    for i in range(turns):
        out += [{"role": "user", "content": "u" * size}, {"role": "assistant", "content": "a" * size}]
    return out + [{"role": "user", "content": "q" * size}]


def test_a_conversation_that_fits_is_sent_whole():
    msgs = _chat(3)
    fitted = fit_to_context(msgs, _count, max_context=200, max_tokens=50)
    assert fitted.messages == msgs and fitted.dropped == 0 and fitted.prompt_tokens == 75


def test_old_turns_go_first_with_slack_and_the_cut_stays_while_it_fits():
    msgs = _chat(10)  # 5 + 21 * 10 = 215 tokens
    fitted = fit_to_context(msgs, _count, max_context=200, max_tokens=50)  # room 150, target 112
    assert fitted.messages[0]["role"] == "system" and fitted.messages[1]["role"] == "user"
    assert fitted.prompt_tokens <= 112 and fitted.dropped > 0 and fitted.messages[-1] == msgs[-1]
    first_kept = fitted.messages[1]
    # two more turns: the same first turn is kept (the prompt's beginning, and the prefix cache, stay)
    longer = msgs + [{"role": "assistant", "content": "b" * 10}, {"role": "user", "content": "c" * 10}]
    again = fit_to_context(longer, _count, max_context=200, max_tokens=50, start=fitted.start)
    assert again.start == fitted.start and again.messages[1] is first_kept
    assert again.messages[:len(fitted.messages)] == fitted.messages


def test_a_newest_message_too_long_for_the_context_is_a_clear_error():
    msgs = [{"role": "user", "content": "x" * 300}]
    with pytest.raises(ContextOverflow, match="300 tokens"):
        fit_to_context(msgs, _count, max_context=200, max_tokens=50)


def test_only_the_newest_message_is_left_when_nothing_else_fits():
    msgs = _chat(2, size=60)
    fitted = fit_to_context(msgs, _count, max_context=100, max_tokens=30)
    assert [m["role"] for m in fitted.messages] == ["system", "user"] and fitted.messages[-1] == msgs[-1]
