"""`POST /v1/completions`: OpenAI's (legacy) text completions on the engine, whole or streamed.

The prompt (a string, tokenized as is without a chat template, or token ids) and the fields honoured are
`app.chat.text_completions`'; `max_tokens` defaults to 16 (OpenAI's and vLLM's default), `priority` to
`interactive`. Responses: a `text_completion`; with `stream: true`, server-sent `text_completion` chunks (the
text deltas, then one with `finish_reason`, then with `stream_options.include_usage` a usage chunk without
choices), then `data: [DONE]`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from ..chat.text_completions import COMPLETIONS_URL, parse_completion_body, text_completion, usage_chunk
from .body import read_json
from .generation import Generation
from .respond import respond

if TYPE_CHECKING:
    from backend import TokenOutput

router = APIRouter()


@router.post(COMPLETIONS_URL)
async def create_completion(request: Request) -> Any:
    """Answer a completions request (see the module docstring). Errors: `app.server.errors`."""
    body = parse_completion_body(await read_json(request))
    return await respond(request, body, body.prompt, "prompt", _whole, _chunks)


def _whole(gen: Generation, model: str, text: str, last: TokenOutput, created: int) -> dict:
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
