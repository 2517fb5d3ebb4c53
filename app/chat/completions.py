"""The OpenAI chat-completions format: a request body into chat messages and `SamplingParams` keyword
arguments, and the `chat.completion` / `chat.completion.chunk` objects built from an answer.

Schemas: OpenAI API reference, "Create chat completion" (`CompletionCreateParams`, `ChatCompletion`,
`ChatCompletionChunk` in the official `openai` package's types).

Body fields honoured: `messages`, `max_tokens` / `max_completion_tokens` (not both), `temperature`, `top_p`,
`seed`, `stop` (string or list), and the vLLM extras `top_k`, `ignore_eos`. `model` is accepted (a string)
and ignored. A `null` value means "absent" (OpenAI's default). Defaults are OpenAI's: temperature 1, top_p 1;
`max_tokens` defaults to `DEFAULT_MAX_TOKENS`.

Fields accepted only with the value that is a no-op here (anything else is an `unsupported_parameter` error,
never silently ignored): `n: 1`, `stream: false`, `logprobs: false`, `presence_penalty: 0`,
`frequency_penalty: 0`, `response_format: {"type": "text"}`; `user` (an end-user tag, no effect) is accepted
as any string. Every other body field (`tools`, `logit_bias`, ...) is an error.

Over HTTP (`parse_body(body, over_http=True)`, the `baton serve` route) three more fields are honoured:
`stream` (true streams `chat.completion.chunk`s), `stream_options: {"include_usage": bool}` (only with
`stream: true`, as OpenAI requires) and Baton's `priority` (`parse_priority`). A batch line has neither: its
requests run at `Priority.BATCH` and are never streamed.

Messages: `role` one of system, user, assistant, developer (`developer` is sent as `system`, as OpenAI does
for models without a developer role); `content` a string or a list of `{"type": "text", "text": ...}` parts
(joined with newlines, as vLLM does). Other message fields (`name`, `tool_calls`, ...) are errors.
Every string in the body (field names too) must be valid UTF-8 text and every number finite: a lone
surrogate, NaN or Infinity is an `invalid_value` error naming the field (`app.chat.json_values`).

Imports no torch (from the engine only the torch-free `backend.Priority`): sampling values are handed on as
`SamplingParams` keyword arguments, and the engine's `SamplingParams` validates them (its `ValueError` names
the field).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from backend import Priority

from .json_values import value_problem

CHAT_COMPLETIONS_URL = "/v1/chat/completions"
DEFAULT_MAX_TOKENS = 256
OPENAI_DEFAULTS: dict[str, Any] = {"max_tokens": DEFAULT_MAX_TOKENS, "temperature": 1.0, "top_p": 1.0}

# Body fields handed to SamplingParams under the same name (it validates types and ranges).
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "seed", "stop", "ignore_eos")
# Body fields accepted only with the value that changes nothing here.
NOOP_FIELDS: dict[str, Any] = {"n": 1, "stream": False, "logprobs": False, "presence_penalty": 0,
                               "frequency_penalty": 0, "response_format": {"type": "text"}}
ROLES = {"system": "system", "user": "user", "assistant": "assistant", "developer": "system"}
#: Body fields honoured only over HTTP (`parse_body(..., over_http=True)`).
HTTP_FIELDS = ("stream", "stream_options", "priority")


class RequestError(Exception):
    """A request body that cannot run.

    Attributes:
        code: OpenAI's machine-readable error code (`invalid_value`, `unsupported_parameter`,
            `invalid_request`, ...).
        message: what is wrong, for people (names the field, e.g. `body.messages[0].role must be ...`).
        param: the body field at fault as OpenAI's error `param` names it (`messages[0].role`,
            `temperature`), or None when no one field is.
    """

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass(frozen=True)
class ChatRequest:
    """A parsed chat-completions request body.

    Attributes:
        messages: chat messages `[{"role", "content"}]` with string contents (the engine's prompt).
        sampling: keyword arguments for `backend.SamplingParams` (not yet validated by it).
        model: the body's `model`, or None when it has none.
        stream: stream `chat.completion.chunk`s (only over HTTP).
        include_usage: `stream_options.include_usage`: a last chunk with `usage` (only over HTTP).
        priority: the body's `priority` (`parse_priority`), or None when it has none.
    """

    messages: list[dict[str, str]]
    sampling: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    stream: bool = False
    include_usage: bool = False
    priority: Priority | None = None


def parse_body(body: Any, *, over_http: bool = False,
               default_max_tokens: int = DEFAULT_MAX_TOKENS) -> ChatRequest:
    """Check a chat-completions request body and turn it into messages and sampling arguments.

    Args:
        body: the decoded JSON body.
        over_http: honour the HTTP-only fields `stream`, `stream_options` and `priority` (`baton serve`);
            False (a batch line) refuses them as everywhere else unless they are no-ops.
        default_max_tokens: `max_tokens` when the body gives neither it nor `max_completion_tokens` (tokens).
    Raises:
        RequestError: the body, a message or a field is invalid or unsupported (see the module docstring);
            `invalid_value` naming the field for a string that is not valid UTF-8 text (a lone surrogate) or a
            number that is not finite.
    """
    body = check_object(body)
    given = {k: v for k, v in body.items() if v is not None}
    http = {k: given.pop(k) for k in HTTP_FIELDS if over_http and k in given}
    stream, include_usage = parse_stream(http.get("stream"), http.get("stream_options"))
    priority = parse_priority(http["priority"]) if "priority" in http else None
    model = given.get("model")
    sampling = parse_sampling({k: v for k, v in given.items() if k != "messages"}, default_max_tokens, NOOP_FIELDS)
    return ChatRequest(_parse_messages(body.get("messages")), sampling, model, stream, include_usage, priority)


def check_object(body: Any) -> dict[str, Any]:
    """`body` if it is a JSON object whose every string is valid UTF-8 text and every number finite.

    Raises:
        RequestError: `invalid_request` for a body that is not an object; `invalid_value` naming the field
            (`param`) for a lone surrogate, NaN or Infinity (`app.chat.json_values`).
    """
    if not isinstance(body, dict):
        raise RequestError("invalid_request", f"body must be a JSON object, got {type(body).__name__}")
    problem = value_problem(body, "body")
    if problem is not None:
        where = problem.partition(": ")[0].removeprefix("body").removeprefix(".")
        raise RequestError("invalid_value", problem, where or None)
    return body


def parse_stream(stream: Any, options: Any) -> tuple[bool, bool]:
    """`(stream, include_usage)` from the body's `stream` and `stream_options` (None: absent).

    Raises:
        RequestError: `stream` not a boolean; `stream_options` without `stream: true` (OpenAI refuses it too),
            not an object, or with a field other than a boolean `include_usage`.
    """
    if stream is not None and not isinstance(stream, bool):
        raise RequestError("invalid_value", f"body.stream must be a boolean, got {json.dumps(stream)}", "stream")
    if options is None:
        return bool(stream), False
    if not stream:
        raise RequestError("invalid_value", "body.stream_options is only allowed with stream: true",
                           "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise RequestError("unsupported_parameter", "body.stream_options: only {\"include_usage\": bool} is "
                                                    f"supported, got {json.dumps(options)}", "stream_options")
    usage_flag = options.get("include_usage", False)
    if not isinstance(usage_flag, bool):
        raise RequestError("invalid_value", "body.stream_options.include_usage must be a boolean, got "
                                            f"{json.dumps(usage_flag)}", "stream_options.include_usage")
    return True, usage_flag


#: The `priority` body field's names; vLLM's integer form maps through `parse_priority`.
PRIORITY_NAMES = {p.name.lower(): p for p in Priority}


def parse_priority(value: Any) -> Priority:
    """The scheduling class a body's `priority` asks for.

    Accepted: Baton's names `"interactive"`, `"agent"`, `"batch"`; or vLLM's integer form (`vllm serve
    --scheduling-policy priority`: any integer, lower runs sooner, 0 by default), mapped by clamping to
    Baton's classes: `<= 0` interactive, `1` agent, `>= 2` batch (the values of `backend.Priority`, so
    Baton's own integers round-trip, and vLLM's default 0 is Baton's default, interactive).
    Raises:
        RequestError: `invalid_value` (param `priority`) for anything else.
    """
    if isinstance(value, str) and value in PRIORITY_NAMES:
        return PRIORITY_NAMES[value]
    if isinstance(value, int) and not isinstance(value, bool):
        return Priority(min(max(value, Priority.INTERACTIVE), Priority.BATCH))
    raise RequestError("invalid_value", "body.priority must be one of " + ", ".join(PRIORITY_NAMES)
                       + f", or an integer (vLLM's form: lower runs sooner), got {json.dumps(value)}", "priority")


def _parse_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise RequestError("invalid_value", "body.messages must be a non-empty list of messages", "messages")
    out = []
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        where = f"body.{param}"
        if not isinstance(msg, dict):
            raise RequestError("invalid_value", f"{where} must be an object, got {type(msg).__name__}", param)
        extra = sorted(set(msg) - {"role", "content"})
        if extra:
            raise RequestError("unsupported_parameter", f"{where}: field(s) {', '.join(extra)} not supported "
                                                        "(only role and content)", f"{param}.{extra[0]}")
        role = msg.get("role")
        if role not in ROLES:
            raise RequestError("invalid_value", f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}",
                               f"{param}.role")
        out.append({"role": ROLES[role], "content": _content_text(msg.get("content"), param)})
    return out


def _content_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                    and set(part) == {"type", "text"}):
                raise RequestError("unsupported_parameter",
                                   f"body.{param}.content[{j}]: only text parts {{\"type\": \"text\", \"text\": "
                                   "...}} are supported", f"{param}.content[{j}]")
            texts.append(part["text"])
        return "\n".join(texts)
    raise RequestError("invalid_value", f"body.{param}.content must be a string or a non-empty list of text parts, "
                                        f"got {content!r}", f"{param}.content")


def _same_value(value: Any, expected: Any) -> bool:
    """Equality that does not take True for 1 or 0 for False."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    if isinstance(expected, (int, float)):
        return isinstance(value, (int, float)) and value == expected
    return value == expected


def parse_sampling(given: dict[str, Any], default_max_tokens: int, noops: dict[str, Any],
                   max_token_fields: tuple[str, ...] = ("max_tokens", "max_completion_tokens")) -> dict[str, Any]:
    """`SamplingParams` keyword arguments from a body's fields that are not null, the prompt's field taken out
    (both completions formats): OpenAI's defaults, `max_tokens` from any of `max_token_fields` (at most one
    given; `default_max_tokens` tokens otherwise), `SAMPLING_FIELDS` as given, `model` and `user` checked to be
    strings, anything else accepted only with its value in `noops`.

    Raises:
        RequestError: two max-token fields, a non-string `model` / `user`, or a field `check_noop` refuses.
    """
    sampling = {**OPENAI_DEFAULTS, "max_tokens": default_max_tokens}
    if sum(f in given for f in max_token_fields) > 1:
        raise RequestError("invalid_value", f"give {' or '.join(max_token_fields)}, not both", max_token_fields[-1])
    for key, value in given.items():
        if key in max_token_fields:
            sampling["max_tokens"] = value
        elif key in SAMPLING_FIELDS:
            sampling[key] = value
        elif key in ("model", "user"):
            if not isinstance(value, str):
                raise RequestError("invalid_value", f"body.{key} must be a string, got {value!r}", key)
        else:
            check_noop(key, value, noops)
    return sampling


def check_noop(key: str, value: Any, noops: dict[str, Any]) -> None:
    """Accept a field only with the value that changes nothing here (`noops[key]`).

    Raises:
        RequestError: `unsupported_parameter` (param `key`) for another value, or a field not in `noops`.
    """
    if key not in noops:
        raise RequestError("unsupported_parameter", f"body.{key} is not supported by baton", key)
    if not _same_value(value, noops[key]):
        raise RequestError("unsupported_parameter", f"body.{key}: only {json.dumps(noops[key])} is supported, "
                                                    f"got {json.dumps(value)}", key)


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """The `usage` object: prompt, completion and total tokens, and `prompt_tokens_details.cached_tokens`
    (prompt tokens served from the engine's prefix cache; OpenAI's `CompletionUsage`)."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def chat_completion(request_id: str, model: str, content: str, finish_reason: str, prompt_tokens: int,
                    completion_tokens: int, created: int | None = None, cached_tokens: int = 0) -> dict[str, Any]:
    """A `chat.completion` object for one finished answer.

    Args:
        request_id: the engine's id of the request (the completion id is `chatcmpl-<request_id>`).
        model: the model name to report.
        content: the generated text.
        finish_reason: `stop` or `length`.
        prompt_tokens, completion_tokens: token counts for `usage` (tokens).
        created: Unix time of the completion (s; default: now).
        cached_tokens: prompt tokens served from the prefix cache (tokens).
    Returns:
        A JSON-serialisable dict in OpenAI's `ChatCompletion` shape.
    """
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage(prompt_tokens, completion_tokens, cached_tokens),
    }


def chat_completion_chunk(request_id: str, model: str, created: int, content: str | None = None,
                          role: str | None = None, finish_reason: str | None = None,
                          usage_counts: tuple[int, ...] | None = None,
                          include_usage: bool = False) -> dict[str, Any]:
    """A `chat.completion.chunk` object: one streamed delta of an answer (server-sent events).

    Args:
        request_id: the engine's id of the request (the chunk id is `chatcmpl-<request_id>`, the same for
            every chunk of one answer).
        model: the model name to report.
        created: Unix time of the completion (s; the same for every chunk).
        content: the text delta, or None for none.
        role: `assistant` in the first chunk, else None.
        finish_reason: `stop` / `length` in the last chunk, else None.
        usage_counts: `(prompt_tokens, completion_tokens[, cached_tokens])` for the final usage-only chunk
            (`stream_options.include_usage`): that chunk has no choices.
        include_usage: the stream ends with a usage chunk, so this chunk carries `"usage": null` (OpenAI:
            "all other chunks will also include a usage field, but with a null value").
    Returns:
        A JSON-serialisable dict in OpenAI's `ChatCompletionChunk` shape.
    """
    chunk: dict[str, Any] = {"id": f"chatcmpl-{request_id}", "object": "chat.completion.chunk",
                             "created": created, "model": model}
    if usage_counts is not None:
        chunk["choices"], chunk["usage"] = [], usage(*usage_counts)
        return chunk
    delta: dict[str, str] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    chunk["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    if include_usage:
        chunk["usage"] = None
    return chunk
