"""`POST /v1/completions`: OpenAI's (legacy) text completions on the engine, whole or streamed.

The prompt (a string, tokenized as is without a chat template, or token ids) and the fields honoured are
`app.chat.text_completions`'; `max_tokens` defaults to 16 (OpenAI's and vLLM's default), `priority` to
`interactive`. Responses: a `text_completion`; with `stream: true`, server-sent `text_completion` chunks (the
text deltas, then one with `finish_reason`, then with `stream_options.include_usage` a usage chunk without
choices), then `data: [DONE]`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response

from backend import Priority

from ..chat.text_completions import COMPLETIONS_URL, parse_completion_body, text_completion, usage_chunk
from .body import read_json
from .generation import ClientGone, Generation, check_model, open_generation, sampling_params, until_disconnected
from .sse import event_stream

router = APIRouter()


@router.post(COMPLETIONS_URL)
async def create_completion(request: Request) -> Any:
    """Answer a completions request (see the module docstring). Errors: `app.server.errors`."""
    state = request.app.state.baton
    body = parse_completion_body(await read_json(request))
    model = check_model(state, body.model)
    params = sampling_params(body.sampling)
    priority = body.priority if body.priority is not None else Priority.INTERACTIVE
    try:
        gen = await open_generation(state, request, body.prompt, params, priority, "prompt")
    except ClientGone:
        return Response(status_code=499)
    created = int(time.time())
    if body.stream:
        return event_stream(_chunks(gen, model, created, body.include_usage), state.settings.drain_timeout_s)
    try:
        text, last = await until_disconnected(request, gen.collect())
    except ClientGone:
        return Response(status_code=499)
    return text_completion(gen.request_id, model, text, gen.finish_reason(last), created,
                           usage_counts=(last.prompt_tokens, last.completion_tokens, last.cached_tokens))


async def _chunks(gen: Generation, model: str, created: int, include_usage: bool) -> AsyncIterator[dict]:
    rid = gen.request_id
    async for out in gen.outputs():
        reason = gen.finish_reason(out) if out.finished else None
        if out.text or reason is not None:
            yield text_completion(rid, model, out.text, reason, created, include_usage=include_usage)
        if out.finished and include_usage:
            yield usage_chunk(rid, model, created, out.prompt_tokens, out.completion_tokens, out.cached_tokens)
