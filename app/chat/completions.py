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

Messages: `role` one of system, user, assistant, developer (`developer` is sent as `system`, as OpenAI does
for models without a developer role); `content` a string or a list of `{"type": "text", "text": ...}` parts
(joined with newlines, as vLLM does). Other message fields (`name`, `tool_calls`, ...) are errors.
Every string in the body (field names too) must be valid UTF-8 text and every number finite: a lone
surrogate, NaN or Infinity is an `invalid_value` error naming the field (`app.chat.json_values`).

Imports neither torch nor the engine: sampling values are handed on as `SamplingParams` keyword arguments,
and the engine's `SamplingParams` validates them (its `ValueError` names the field).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

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


class RequestError(Exception):
    """A request body that cannot run.

    Attributes:
        code: OpenAI's machine-readable error code (`invalid_value`, `unsupported_parameter`,
            `invalid_request`, ...).
        message: what is wrong, for people (names the field, e.g. `body.messages[0].role must be ...`).
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class ChatRequest:
    """A parsed chat-completions request body.

    Attributes:
        messages: chat messages `[{"role", "content"}]` with string contents (the engine's prompt).
        sampling: keyword arguments for `backend.SamplingParams` (not yet validated by it).
    """

    messages: list[dict[str, str]]
    sampling: dict[str, Any] = field(default_factory=dict)


def parse_body(body: Any) -> ChatRequest:
    """Check a chat-completions request body and turn it into messages and sampling arguments.

    Raises:
        RequestError: the body, a message or a field is invalid or unsupported (see the module docstring);
            `invalid_value` naming the field for a string that is not valid UTF-8 text (a lone surrogate) or a
            number that is not finite.
    """
    if not isinstance(body, dict):
        raise RequestError("invalid_request", f"body must be a JSON object, got {type(body).__name__}")
    problem = value_problem(body, "body")
    if problem is not None:
        raise RequestError("invalid_value", problem)
    return ChatRequest(_parse_messages(body.get("messages")), _parse_sampling(body))


def _parse_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise RequestError("invalid_value", "body.messages must be a non-empty list of messages")
    out = []
    for i, msg in enumerate(messages):
        where = f"body.messages[{i}]"
        if not isinstance(msg, dict):
            raise RequestError("invalid_value", f"{where} must be an object, got {type(msg).__name__}")
        extra = sorted(set(msg) - {"role", "content"})
        if extra:
            raise RequestError("unsupported_parameter", f"{where}: field(s) {', '.join(extra)} not supported "
                                                        "(only role and content)")
        role = msg.get("role")
        if role not in ROLES:
            raise RequestError("invalid_value", f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
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
                raise RequestError("unsupported_parameter",
                                   f"{where}.content[{j}]: only text parts {{\"type\": \"text\", \"text\": ...}} "
                                   "are supported")
            texts.append(part["text"])
        return "\n".join(texts)
    raise RequestError("invalid_value", f"{where}.content must be a string or a non-empty list of text parts, "
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
        raise RequestError("invalid_value", "give max_tokens or max_completion_tokens, not both")
    for key, value in given.items():
        if key == "messages":
            continue
        if key in ("max_tokens", "max_completion_tokens"):
            sampling["max_tokens"] = value
        elif key in SAMPLING_FIELDS:
            sampling[key] = value
        elif key in ("model", "user"):
            if not isinstance(value, str):
                raise RequestError("invalid_value", f"body.{key} must be a string, got {value!r}")
        elif key in NOOP_FIELDS:
            if not _same_value(value, NOOP_FIELDS[key]):
                raise RequestError("unsupported_parameter",
                                   f"body.{key}: only {json.dumps(NOOP_FIELDS[key])} is supported, "
                                   f"got {json.dumps(value)}")
        else:
            raise RequestError("unsupported_parameter", f"body.{key} is not supported by baton")
    return sampling


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
                          usage_counts: tuple[int, ...] | None = None) -> dict[str, Any]:
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
    return chunk
