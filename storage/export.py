"""Rendering a chat for export: Markdown for reading, JSON (a dict) for tools and re-import."""

from __future__ import annotations

from typing import Any

from .records import Chat, Message

EXPORT_FORMAT = "baton.chat"
EXPORT_VERSION = 1


def _stats_line(m: Message) -> str:
    parts = []
    if m.prompt_tokens is not None or m.completion_tokens is not None:
        parts.append(f"{m.prompt_tokens or 0} prompt + {m.completion_tokens or 0} completion tokens")
    if m.ttft_ms is not None:
        parts.append(f"first token {m.ttft_ms:.0f} ms")
    if m.cached_tokens:
        parts.append(f"{m.cached_tokens} prompt tokens cached")
    if m.tokens_per_s is not None:
        parts.append(f"{m.tokens_per_s:.1f} tokens/s")
    if m.finish_reason not in (None, "stop"):
        parts.append(f"finish: {m.finish_reason}")
    elif m.streaming:
        parts.append("unfinished")
    if m.dropped_messages:
        parts.append(f"{m.dropped_messages} earlier message{'s' * (m.dropped_messages != 1)} left out of the prompt")
    return " · ".join(parts)


def chat_markdown(chat: Chat, messages: list[Message], positions: dict[int, tuple[int, int]] | None = None) -> str:
    """The chat as Markdown: title, system prompt, then one section per message with its stats.

    `positions`: `(number, count)` of the messages that have alternatives (`Branch.positions`), shown in their
    heading as "answer 2 of 3".
    """
    positions = positions or {}
    lines = [f"# {chat.title}", "", f"_Created {chat.created_at:%Y-%m-%d %H:%M} UTC, "
             f"last updated {chat.updated_at:%Y-%m-%d %H:%M} UTC._", ""]
    if chat.system_prompt:
        lines += ["**System prompt:**", ""]
        lines += [f"> {line}" if line else ">" for line in chat.system_prompt.splitlines()]
        lines.append("")
    for m in messages:
        heading = m.role.capitalize()
        if m.role == "assistant" and m.model:
            heading += f" ({m.model})"
        if m.id in positions:
            number, count = positions[m.id]
            heading += f" · {'answer' if m.role == 'assistant' else 'version'} {number} of {count}"
        lines += ["---", "", f"### {heading}", "", m.content, ""]
        stats = _stats_line(m) if m.role == "assistant" else ""
        if stats:
            lines += [f"_{stats}_", ""]
    return "\n".join(lines).rstrip() + "\n"


def _message_dict(m: Message, alternatives: int) -> dict[str, Any]:
    return {
        "id": m.id, "parent_id": m.parent_id, "alternatives": alternatives, "role": m.role, "content": m.content,
        "model": m.model,
        "prompt_tokens": m.prompt_tokens, "completion_tokens": m.completion_tokens, "ttft_ms": m.ttft_ms,
        "tokens_per_s": m.tokens_per_s, "cached_tokens": m.cached_tokens, "dropped_messages": m.dropped_messages,
        "finish_reason": m.finish_reason,
        "created_at": m.created_at.isoformat(), "updated_at": m.updated_at.isoformat(),
    }


def chat_dict(chat: Chat, messages: list[Message], alternatives: dict[int, int] | None = None) -> dict[str, Any]:
    """The chat and its messages as JSON-ready data (timestamps as ISO-8601 strings).

    `alternatives`: how many alternatives each message has, itself included (1 when not given).
    """
    alternatives = alternatives or {}
    return {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION,
        "id": chat.id, "title": chat.title, "system_prompt": chat.system_prompt, "params": chat.params,
        "archived": chat.archived, "created_at": chat.created_at.isoformat(),
        "updated_at": chat.updated_at.isoformat(),
        "messages": [_message_dict(m, alternatives.get(m.id, 1)) for m in messages],
    }
