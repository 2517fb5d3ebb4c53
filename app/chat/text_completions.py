"""The OpenAI (legacy) completions format: a `/v1/completions` body into a prompt and `SamplingParams` keyword
arguments, and the `text_completion` objects built from an answer.

Schemas: OpenAI API reference, "Create completion" (`CompletionCreateParams`, `Completion`, `CompletionChoice`
in the official `openai` package's types); streamed chunks have the same `text_completion` shape.

Body fields honoured: `prompt` (a string, a list of token ids, or a list holding exactly one of those: one
prompt per request), `max_tokens` (default `DEFAULT_COMPLETION_MAX_TOKENS`, 16, OpenAI's and vLLM's default),
`temperature`, `top_p`, `seed`, `stop`, the vLLM extras `top_k`, `ignore_eos`, and, as for chat completions
(`app.chat.completions`), `model`, `user`, `stream`, `stream_options` and Baton's `priority`.
Accepted only as no-ops: `n: 1`, `best_of: 1`, `echo: false`, `presence_penalty: 0`, `frequency_penalty: 0`;
`logprobs`, `suffix` and `logit_bias` only as null. Anything else is an `unsupported_parameter` error.
Imports no torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from backend import Priority

from .completions import (RequestError, check_object, parse_sampling,
                          parse_priority, parse_stream, usage)

COMPLETIONS_URL = "/v1/completions"
DEFAULT_COMPLETION_MAX_TOKENS = 16
NOOP_FIELDS: dict[str, Any] = {"n": 1, "best_of": 1, "echo": False, "presence_penalty": 0,
                               "frequency_penalty": 0}

Prompt = str | list[int]


@dataclass(frozen=True)
class CompletionRequest:
    """A parsed `/v1/completions` body.

    Attributes:
        prompt: the text (tokenized as is, no chat template) or the token ids.
        sampling: keyword arguments for `backend.SamplingParams` (not yet validated by it).
        model, stream, include_usage, priority: as `app.chat.completions.ChatRequest`'s.
    """

    prompt: Prompt
    sampling: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    stream: bool = False
    include_usage: bool = False
    priority: Priority | None = None


def parse_completion_body(body: Any, default_max_tokens: int = DEFAULT_COMPLETION_MAX_TOKENS) -> CompletionRequest:
    """Check a completions request body and turn it into a prompt and sampling arguments.

    Args:
        body: the decoded JSON body.
        default_max_tokens: `max_tokens` when the body has none (tokens).
    Raises:
        RequestError: the body or a field is invalid or unsupported (see the module docstring), naming the
            field in `param`.
    """
    given = {k: v for k, v in check_object(body).items() if v is not None}
    stream, include_usage = parse_stream(given.pop("stream", None), given.pop("stream_options", None))
    priority = parse_priority(given.pop("priority")) if "priority" in given else None
    prompt = _prompt(given.pop("prompt", None))
    sampling = parse_sampling(given, default_max_tokens, NOOP_FIELDS, max_token_fields=("max_tokens",))
    return CompletionRequest(prompt, sampling, given.get("model"), stream, include_usage, priority)


def _prompt(prompt: Any) -> Prompt:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, str) and prompt:
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        raise RequestError("unsupported_parameter", f"body.prompt: one prompt per request, got {len(prompt)} "
                                                    "(send them as separate requests: they run in one batch)",
                           "prompt")
    raise RequestError("invalid_value", "body.prompt must be a non-empty string or a non-empty list of token ids",
                       "prompt")


def text_completion(request_id: str, model: str, text: str, finish_reason: str | None, created: int | None = None,
                    usage_counts: tuple[int, ...] | None = None, include_usage: bool = False) -> dict[str, Any]:
    """A `text_completion` object: a whole answer, or one streamed delta of it.

    Args:
        request_id: the engine's id of the request (the completion id is `cmpl-<request_id>`).
        model: the model name to report.
        text: the generated text (a stream's delta).
        finish_reason: `stop` / `length` (a stream's last delta and a whole answer), else None.
        created: Unix time of the completion (s; default: now; the same for every chunk of a stream).
        usage_counts: `(prompt_tokens, completion_tokens[, cached_tokens])` for `usage` (a whole answer; a
            stream ends with `usage_chunk` instead).
        include_usage: a streamed chunk that is not the usage chunk carries `"usage": null`
            (`stream_options.include_usage`, as vLLM does).
    Returns:
        A JSON-serialisable dict in OpenAI's `Completion` shape.
    """
    out: dict[str, Any] = {"id": f"cmpl-{request_id}", "object": "text_completion",
                           "created": int(time.time()) if created is None else created, "model": model,
                           "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
    if usage_counts is not None:
        out["usage"] = usage(*usage_counts)
    elif include_usage:
        out["usage"] = None
    return out


def usage_chunk(request_id: str, model: str, created: int, prompt_tokens: int, completion_tokens: int,
                cached_tokens: int = 0) -> dict[str, Any]:
    """A stream's final usage-only `text_completion` chunk (`stream_options.include_usage`): no choices.
    Token counts as `app.chat.completions.usage`'s (cached_tokens: prompt tokens from the prefix cache)."""
    return {"id": f"cmpl-{request_id}", "object": "text_completion", "created": created, "model": model,
            "choices": [], "usage": usage(prompt_tokens, completion_tokens, cached_tokens)}
