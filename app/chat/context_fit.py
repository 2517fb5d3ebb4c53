"""A conversation longer than the model's context: which old turns are left out, so the chat keeps working.

The system prompt and the newest user message are always kept; the oldest turns go first. Trimming is done with
slack: when the conversation no longer fits, turns are dropped until it takes at most `1 - SLACK` of what the
context leaves after the answer's `max_tokens`, and the same first kept turn is used again on later turns for as
long as the conversation fits from it. The prompt's beginning then stays the same from turn to turn, so the
engine's prefix cache keeps serving it (trimming one turn per new turn would change the prefix every time and
recompute the whole history on every turn).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

SLACK = 0.25  # share of the room left free after a trim, for the turns that follow (fraction)


class ContextOverflow(ValueError):
    """Even the system prompt and the newest message alone leave no room for the answer."""


@dataclass(frozen=True)
class FittedPrompt:
    """The chat messages to send, and what was left out.

    Attributes:
        messages: the messages sent (system prompt first when there is one).
        start: index (in the turns without the system prompt) of the first turn kept; pass it back as
            `start` on the next turn of the same chat to keep the prompt's beginning stable.
        dropped: turns left out (user and assistant messages; 0 when everything fits).
        prompt_tokens: tokens of the prompt sent (tokens).
    """

    messages: list[dict[str, str]]
    start: int
    dropped: int
    prompt_tokens: int


def fit_to_context(messages: list[dict[str, str]], count_tokens: Callable[[list[dict[str, str]]], int],
                   max_context: int, max_tokens: int, start: int = 0) -> FittedPrompt:
    """Leave out the oldest turns of `messages` until the prompt and `max_tokens` fit in `max_context`.

    Args:
        messages: the whole conversation (`build_prompt`'s output: an optional system message, then turns).
        count_tokens: prompt tokens of a list of messages (e.g. `len(engine.tokenize(messages))`).
        max_context: the model's context (tokens; `Engine.max_model_len`).
        max_tokens: the answer's most tokens (tokens).
        start: the first turn kept last time (0: none left out).
    Returns:
        the messages to send and what was left out. When the newest message alone leaves less than
        `max_tokens`, it is sent anyway: the answer ends at the context (`finish_reason` `length`).
    Raises:
        ContextOverflow: the newest message with the system prompt cannot fit with room for one token.
    """
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    room = max_context - max_tokens

    def fits(first: int, limit: int) -> int | None:
        n = count_tokens(system + turns[first:])
        return n if n <= limit else None

    last = max(0, len(turns) - 1)
    first = min(max(0, start), last)
    if (n := fits(first, room)) is not None:  # the previous cut (or no cut) still fits: the prefix stays
        return FittedPrompt(system + turns[first:], first, first, n)
    target = int(room * (1 - SLACK))
    for first in range(first + 1, last + 1):
        if turns[first]["role"] != "user" and first != last:
            continue  # start at a user turn, as a conversation does
        if (n := fits(first, target)) is not None or first == last:
            break
    n = count_tokens(system + turns[first:])
    if n >= max_context:
        raise ContextOverflow(f"the message is {n} tokens with the system prompt, more than the model's context "
                              f"of {max_context} tokens")
    return FittedPrompt(system + turns[first:], first, first, n)
