"""A job item's outcome for people to read: its prompt, its output text or error, tokens and finish reason.

`item_result(job, item)` reads what the runner stored: a batch item's OpenAI Batch output line
(`app.chat.batch_file.success_line`) or an agent step's result (`app.jobs.agent_task`), a failed item's
`"<code>: <message>"` error, or nothing yet for a pending item. Views list these (the TUI's results screen);
`app.jobs.export` writes the machine-readable file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage import Job, JobItem

from .batch_job import split_error


@dataclass(frozen=True)
class ItemResult:
    """One item as a view shows it.

    Attributes:
        idx: the item's position in the job's input (0-based).
        label: `custom_id` of a batch line, `step N` of an agent step.
        status: `done`, `failed` or `pending`.
        prompt: the last user message of a batch line, the rendered prompt of a done step, else the
            step's template; "" when the line had none (a malformed line).
        text: the answer (done), `"<code>: <message>"` (failed), or "" (pending).
        tokens: output tokens of a done item, else None.
        finish_reason: `stop` / `length` for a done item, else None.
    """

    idx: int
    label: str
    status: str
    prompt: str
    text: str
    tokens: int | None = None
    finish_reason: str | None = None

    @property
    def summary(self) -> str:
        """`done · 8 tokens · length`, `failed`, `pending`."""
        parts = [self.status]
        if self.tokens is not None:
            parts.append(f"{self.tokens} tokens")
        if self.finish_reason:
            parts.append(self.finish_reason)
        return " · ".join(parts)


def item_result(job: Job, item: JobItem) -> ItemResult:
    """The outcome of one of `job`'s items (results the store cannot have, such as a line written by another
    version, read as far as they go: missing parts are empty)."""
    agent = job.kind == "agent"
    label = f"step {item.idx + 1}" if agent else (item.custom_id or f"line {item.request.get('line_no', item.idx + 1)}")
    prompt = _agent_prompt(item) if agent else _last_user(item.request.get("messages"))
    if item.status == "failed":
        code, message = split_error(item.error)
        return ItemResult(item.idx, label, "failed", prompt, f"{code}: {message}")
    if item.status != "done":
        return ItemResult(item.idx, label, item.status, prompt, "")
    result = item.result if isinstance(item.result, dict) else {}
    if agent:
        return ItemResult(item.idx, label, "done", str(result.get("prompt", prompt)), str(result.get("text", "")),
                          _int(result.get("completion_tokens")), result.get("finish_reason"))
    body = _get(result, "response", "body")
    choice = (_get(body, "choices") or [{}])[0]
    return ItemResult(item.idx, label, "done", prompt, str(_get(choice, "message", "content") or ""),
                      _int(_get(body, "usage", "completion_tokens")), _get(choice, "finish_reason"))


def _agent_prompt(item: JobItem) -> str:
    return str(item.request.get("prompt", ""))


def _last_user(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1]) if users and users[-1] is not None else ""


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
