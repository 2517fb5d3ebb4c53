"""The prompt a chat sends: chat messages (`[{"role", "content"}]` dicts, what the engine's chat template
takes) built from the stored conversation, and which stored messages its turns are."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage import Message as StoredMessage


def build_prompt(system_prompt: str | None, stored: list[StoredMessage]) -> list[dict[str, str]]:
    """The chat messages sent to the engine: the system prompt, then every non-empty user/assistant turn.

    Args:
        system_prompt: the chat's system prompt, or None / "" for none.
        stored: the chat's stored messages, oldest first (system rows are skipped: the prompt comes from
            `system_prompt`).
    """
    prompt = [{"role": "system", "content": system_prompt}] if system_prompt else []
    prompt += [{"role": x.role, "content": x.content} for x in prompt_turns(stored)]
    return prompt


def prompt_turns(stored: list[StoredMessage]) -> list[StoredMessage]:
    """The stored messages that are the prompt's turns (`build_prompt`'s messages after the system prompt, in
    the same order): the non-empty user and assistant messages."""
    return [x for x in stored if x.role in ("user", "assistant") and x.content.strip()]
