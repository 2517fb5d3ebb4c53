"""The OpenAI Batch API file format for `/v1/chat/completions`: parse input lines, build output lines.

Input line: `{"custom_id": str, "method": "POST", "url": "/v1/chat/completions", "body": {...}}`.
Output line: `{"id": "batch_req_...", "custom_id": ..., "response": {"status_code": 200, "request_id": ...,
"body": <chat.completion>}, "error": null}`; a failed line has `"response": null` and
`"error": {"code": ..., "message": ...}` (the OpenAI `BatchRequestOutput` schema: `error` describes a request
that failed without an HTTP response, which is every failure here since nothing goes over HTTP).

Body fields honoured: `messages`, `max_tokens` / `max_completion_tokens` (not both), `temperature`, `top_p`,
`seed`, `stop` (string or list), and the vLLM extras `top_k`, `ignore_eos`. `model` is accepted (a string)
and ignored. A `null` value means "absent" (OpenAI's default). Defaults are OpenAI's: temperature 1, top_p 1;
`max_tokens` defaults to `DEFAULT_MAX_TOKENS`.

Fields accepted only with the value that is a no-op here (anything else is an `unsupported_parameter` error,
never silently ignored): `n: 1`, `stream: false`, `logprobs: false`, `presence_penalty: 0`,
`frequency_penalty: 0`, `response_format: {"type": "text"}`; `user` (an end-user tag, no effect) is accepted
as any string. Every other body field (`tools`, `logit_bias`, ...) is an error for that line.

Messages: `role` one of system, user, assistant, developer (`developer` is sent as `system`, as OpenAI does
for models without a developer role); `content` a string or a list of `{"type": "text", "text": ...}` parts
(joined with newlines, as vLLM does). Other message fields (`name`, `tool_calls`, ...) are errors.

Blank lines are skipped (they hold no request). The first line with a given `custom_id` runs; later lines
with the same id fail with `duplicate_custom_id`.

This module imports neither torch nor the engine: sampling values are handed on as `SamplingParams` keyword
arguments, and the engine's `SamplingParams` validates them (its `ValueError` becomes that line's error).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

CHAT_COMPLETIONS_URL = "/v1/chat/completions"
DEFAULT_MAX_TOKENS = 256
OPENAI_DEFAULTS: dict[str, Any] = {"max_tokens": DEFAULT_MAX_TOKENS, "temperature": 1.0, "top_p": 1.0}

# Body fields handed to SamplingParams under the same name (it validates types and ranges).
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "seed", "stop", "ignore_eos")
# Body fields accepted only with the value that changes nothing here.
NOOP_FIELDS: dict[str, Any] = {"n": 1, "stream": False, "logprobs": False, "presence_penalty": 0,
                               "frequency_penalty": 0, "response_format": {"type": "text"}}
ROLES = {"system": "system", "user": "user", "assistant": "assistant", "developer": "system"}
LINE_FIELDS = ("custom_id", "method", "url", "body")


@dataclass(frozen=True)
class BatchRequest:
    """One valid input line.

    Attributes:
        line_no: 1-based line number in the input file.
        custom_id: the caller's id, echoed in the output line.
        messages: chat messages `[{"role", "content"}]` with string contents.
        sampling: keyword arguments for `backend.SamplingParams` (not yet validated by it).
    """

    line_no: int
    custom_id: str
    messages: list[dict[str, str]]
    sampling: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LineError:
    """One input line that cannot run.

    Attributes:
        line_no: 1-based line number in the input file.
        custom_id: the line's `custom_id` when it has a readable one, else None.
        code: a short machine-readable code (`invalid_json_line`, `invalid_request`, `missing_custom_id`,
            `duplicate_custom_id`, `invalid_method`, `invalid_url`, `invalid_value`, `unsupported_parameter`).
        message: what is wrong, for people.
    """

    line_no: int
    custom_id: str | None
    code: str
    message: str


class _Reject(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def parse_input(data: bytes) -> list[BatchRequest | LineError]:
    """Parse a whole input file: one entry per non-blank line, in file order.

    Args:
        data: the file's bytes (UTF-8 JSONL; `\\r\\n` line ends are fine).
    Returns:
        A `BatchRequest` or a `LineError` per non-blank line. Never raises for bad content.
    """
    entries: list[BatchRequest | LineError] = []
    seen: set[str] = set()
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        entry = parse_line(raw, line_no)
        cid = entry.custom_id
        if cid is not None:
            if cid in seen:
                entry = LineError(line_no, cid, "duplicate_custom_id",
                                  f"line {line_no}: custom_id {cid!r} was already used by an earlier line")
            seen.add(cid)
        entries.append(entry)
    return entries


def parse_line(raw: bytes | str, line_no: int) -> BatchRequest | LineError:
    """Parse and check one input line (duplicates across lines are `parse_input`'s job).

    Args:
        raw: the line, without its newline.
        line_no: its 1-based line number, used in messages.
    Returns:
        A `BatchRequest`, or a `LineError` naming what is wrong. Never raises for bad content.
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        obj = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return LineError(line_no, None, "invalid_json_line", f"line {line_no}: not valid JSON: {exc}")
    if not isinstance(obj, dict):
        return LineError(line_no, None, "invalid_request",
                         f"line {line_no}: a request line must be a JSON object, got {type(obj).__name__}")
    cid = obj.get("custom_id")
    cid = cid if isinstance(cid, str) and cid else None
    try:
        return _parse_request(obj, cid, line_no)
    except _Reject as rej:
        return LineError(line_no, cid, rej.code, f"line {line_no}: {rej.message}")


def _parse_request(obj: dict, cid: str | None, line_no: int) -> BatchRequest:
    if "custom_id" not in obj or obj["custom_id"] is None:
        raise _Reject("missing_custom_id", "custom_id is required")
    if cid is None:
        raise _Reject("invalid_request", f"custom_id must be a non-empty string, got {obj['custom_id']!r}")
    unknown = sorted(set(obj) - set(LINE_FIELDS))
    if unknown:
        raise _Reject("invalid_request", f"unknown field(s) {', '.join(unknown)} in the request line "
                                         f"(expected {', '.join(LINE_FIELDS)})")
    if obj.get("method") != "POST":
        raise _Reject("invalid_method", f"method must be 'POST', got {obj.get('method')!r}")
    if obj.get("url") != CHAT_COMPLETIONS_URL:
        raise _Reject("invalid_url", f"url must be {CHAT_COMPLETIONS_URL!r} (the only endpoint baton serves), "
                                     f"got {obj.get('url')!r}")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise _Reject("invalid_request", f"body must be a JSON object, got {type(body).__name__}")
    return BatchRequest(line_no, cid, _parse_messages(body.get("messages")), _parse_sampling(body))


def _parse_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise _Reject("invalid_value", "body.messages must be a non-empty list of messages")
    out = []
    for i, msg in enumerate(messages):
        where = f"body.messages[{i}]"
        if not isinstance(msg, dict):
            raise _Reject("invalid_value", f"{where} must be an object, got {type(msg).__name__}")
        extra = sorted(set(msg) - {"role", "content"})
        if extra:
            raise _Reject("unsupported_parameter", f"{where}: field(s) {', '.join(extra)} not supported "
                                                   "(only role and content)")
        role = msg.get("role")
        if role not in ROLES:
            raise _Reject("invalid_value", f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
        out.append({"role": ROLES[role], "content": _content_text(msg.get("content"), where)})
    return out


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                    and set(part) == {"type", "text"}):
                raise _Reject("unsupported_parameter",
                              f"{where}.content[{j}]: only text parts {{\"type\": \"text\", \"text\": ...}} "
                              "are supported")
            texts.append(part["text"])
        return "\n".join(texts)
    raise _Reject("invalid_value", f"{where}.content must be a string or a non-empty list of text parts, "
                                   f"got {content!r}")


def _same_value(value: Any, expected: Any) -> bool:
    """Equality that does not take True for 1 or 0 for False."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    if isinstance(expected, (int, float)):
        return isinstance(value, (int, float)) and value == expected
    return value == expected


def _parse_sampling(body: dict) -> dict[str, Any]:
    sampling = dict(OPENAI_DEFAULTS)
    given = {k: v for k, v in body.items() if v is not None}
    if "max_tokens" in given and "max_completion_tokens" in given:
        raise _Reject("invalid_value", "give max_tokens or max_completion_tokens, not both")
    for key, value in given.items():
        if key == "messages":
            continue
        if key in ("max_tokens", "max_completion_tokens"):
            sampling["max_tokens"] = value
        elif key in SAMPLING_FIELDS:
            sampling[key] = value
        elif key == "model":
            if not isinstance(value, str):
                raise _Reject("invalid_value", f"body.model must be a string, got {value!r}")
        elif key == "user":
            if not isinstance(value, str):
                raise _Reject("invalid_value", f"body.user must be a string, got {value!r}")
        elif key in NOOP_FIELDS:
            if not _same_value(value, NOOP_FIELDS[key]):
                raise _Reject("unsupported_parameter",
                              f"body.{key}: only {json.dumps(NOOP_FIELDS[key])} is supported, got {json.dumps(value)}")
        else:
            raise _Reject("unsupported_parameter", f"body.{key} is not supported by baton")
    return sampling


def success_line(custom_id: str, request_id: str, model: str, content: str, finish_reason: str,
                 prompt_tokens: int, completion_tokens: int, created: int | None = None) -> dict[str, Any]:
    """An output line for a request that ran, with a `chat.completion` body.

    Args:
        custom_id: the input line's id.
        request_id: the engine's id of the request (also used in the completion id).
        model: the model name to report.
        content: the generated text.
        finish_reason: `stop` or `length`.
        prompt_tokens, completion_tokens: token counts for `usage`.
        created: Unix time of the completion (default: now).
    Returns:
        A JSON-serialisable dict in the OpenAI `BatchRequestOutput` shape.
    """
    body = {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "logprobs": None, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": request_id, "body": body}, "error": None}


def error_line(custom_id: str | None, code: str, message: str) -> dict[str, Any]:
    """An output line for a request that failed: `response` null, `error` {code, message}.

    Args:
        custom_id: the input line's id, or None when it has no readable one.
        code: short machine-readable code.
        message: what went wrong.
    Returns:
        A JSON-serialisable dict in the OpenAI `BatchRequestOutput` shape.
    """
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}


def dumps_line(obj: dict[str, Any]) -> str:
    """One JSONL line: compact, ASCII-only (non-ASCII as JSON escapes, so any string round-trips), no newline."""
    return json.dumps(obj, separators=(",", ":"))
