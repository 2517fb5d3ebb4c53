"""The OpenAI Batch API file format for `/v1/chat/completions`: parse input lines, build output lines.

Input line: `{"custom_id": str, "method": "POST", "url": "/v1/chat/completions", "body": {...}}`; the body is
a chat-completions request (`app.chat.completions`: the fields honoured and refused are listed there).
Output line: `{"id": "batch_req_...", "custom_id": ..., "response": {"status_code": 200, "request_id": ...,
"body": <chat.completion>}, "error": null}`; a failed line has `"response": null` and
`"error": {"code": ..., "message": ...}` (the OpenAI `BatchRequestOutput` schema: `error` describes a request
that failed without an HTTP response, which is every failure here since nothing goes over HTTP).

Every string in a line must be valid UTF-8 text and every number finite: a lone surrogate (`"\\ud83d"`),
`NaN`, `Infinity`, `-Infinity` (Python's extensions to JSON) or a number beyond a double (`1e999`) fails
that line with `invalid_value` naming the field (`app.chat.json_values`), its `custom_id` kept. `baton batch`
and batch jobs (which store each line as JSON) thus fail the same lines. Blank lines are skipped (they hold
no request). The first line with a given `custom_id` runs; later lines with the same id fail with
`duplicate_custom_id`. Imports neither torch nor the engine.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from .completions import CHAT_COMPLETIONS_URL, RequestError, chat_completion, parse_body
from .json_values import text_problem, value_problem

LINE_FIELDS = ("custom_id", "method", "url", "body")
#: What `baton batch` and `baton jobs submit` both say about a file whose `parse_input` is empty.
NO_REQUESTS = "the batch file has no requests (it is empty or every line is blank)"


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


def parse_input(data: bytes) -> list[BatchRequest | LineError]:
    """Parse a whole input file: one entry per non-blank line, in file order.

    Args:
        data: the file's bytes (UTF-8 JSONL; `\\r\\n` line ends are fine).
    Returns:
        A `BatchRequest` or a `LineError` per non-blank line (none for an empty file: callers refuse that
        with `NO_REQUESTS`). Never raises for bad content.
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
    except ValueError as exc:  # not UTF-8, not JSON, an integer of more than 4300 digits
        return LineError(line_no, None, "invalid_json_line", f"line {line_no}: not valid JSON: {exc}")
    except RecursionError:  # the decoder recurses once per level of arrays and objects
        return LineError(line_no, None, "invalid_json_line", f"line {line_no}: not valid JSON: nested too deeply")
    if not isinstance(obj, dict):
        return LineError(line_no, None, "invalid_request",
                         f"line {line_no}: a request line must be a JSON object, got {type(obj).__name__}")
    cid = obj.get("custom_id")
    cid = cid if isinstance(cid, str) and cid and text_problem(cid) is None else None
    problem = value_problem(obj, "")
    if problem is not None:  # what the tokenizer or the store cannot take: a lone surrogate, NaN, Infinity
        return LineError(line_no, cid, "invalid_value", f"line {line_no}: {problem}")
    try:
        return _parse_request(obj, cid, line_no)
    except RequestError as rej:
        return LineError(line_no, cid, rej.code, f"line {line_no}: {rej.message}")


def _parse_request(obj: dict, cid: str | None, line_no: int) -> BatchRequest:
    if "custom_id" not in obj or obj["custom_id"] is None:
        raise RequestError("missing_custom_id", "custom_id is required")
    if cid is None:
        raise RequestError("invalid_request", f"custom_id must be a non-empty string, got {obj['custom_id']!r}")
    unknown = sorted(set(obj) - set(LINE_FIELDS))
    if unknown:
        raise RequestError("invalid_request", f"unknown field(s) {', '.join(unknown)} in the request line "
                                              f"(expected {', '.join(LINE_FIELDS)})")
    if obj.get("method") != "POST":
        raise RequestError("invalid_method", f"method must be 'POST', got {obj.get('method')!r}")
    if obj.get("url") != CHAT_COMPLETIONS_URL:
        raise RequestError("invalid_url", f"url must be {CHAT_COMPLETIONS_URL!r} (the only endpoint baton "
                                          f"serves), got {obj.get('url')!r}")
    request = parse_body(obj.get("body"))
    return BatchRequest(line_no, cid, request.messages, request.sampling)


def success_line(custom_id: str, request_id: str, model: str, content: str, finish_reason: str,
                 prompt_tokens: int, completion_tokens: int, created: int | None = None,
                 cached_tokens: int = 0) -> dict[str, Any]:
    """An output line for a request that ran, with a `chat.completion` body (`completions.chat_completion`
    gives the arguments' meaning).

    Returns:
        A JSON-serialisable dict in the OpenAI `BatchRequestOutput` shape.
    """
    body = chat_completion(request_id, model, content, finish_reason, prompt_tokens, completion_tokens, created,
                           cached_tokens)
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
