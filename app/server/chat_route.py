"""`POST /v1/chat/completions`: OpenAI's chat completions on the engine, whole or streamed.

The body is parsed by `app.chat.completions.parse_body(over_http=True)` (the fields honoured and refused are
listed there), so the server and batch files accept exactly the same requests; `max_tokens` defaults to the
rest of the context (as vLLM's and OpenAI's do), and `priority` to `interactive`.
Responses: a `chat.completion`; with `stream: true`, server-sent `chat.completion.chunk`s: the first with
`delta.role`, then the text deltas, then one with `finish_reason`, then (with
`stream_options.include_usage`) a usage chunk without choices, then `data: [DONE]`. `usage` reports
`prompt_tokens_details.cached_tokens`, the prompt tokens served from the engine's prefix cache.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from ..chat.completions import CHAT_COMPLETIONS_URL, chat_completion, chat_completion_chunk, parse_body
from .body import read_json
from .generation import Generation
from .respond import respond

if TYPE_CHECKING:
    from backend import TokenOutput

router = APIRouter()


@router.post(CHAT_COMPLETIONS_URL)
async def create_chat_completion(request: Request) -> Any:
    """Answer a chat-completions request (see the module docstring). Errors: `app.server.errors`."""
    state = request.app.state.baton
    body = parse_body(await read_json(request), over_http=True, default_max_tokens=state.engine.max_model_len)
    return await respond(request, body, body.messages, "messages", _whole, _chunks)


def _whole(gen: Generation, model: str, text: str, last: TokenOutput, created: int) -> dict:
    return chat_completion(gen.request_id, model, text, gen.finish_reason(last), last.prompt_tokens,
                           last.completion_tokens, created, last.cached_tokens)


async def _chunks(gen: Generation, model: str, created: int, include_usage: bool) -> AsyncIterator[dict]:
    rid = gen.request_id
    yield chat_completion_chunk(rid, model, created, content="", role="assistant", include_usage=include_usage)
    async for out in gen.outputs():
        if out.text:
            yield chat_completion_chunk(rid, model, created, content=out.text, include_usage=include_usage)
        if out.finished:
            yield chat_completion_chunk(rid, model, created, finish_reason=gen.finish_reason(out),
                                        include_usage=include_usage)
            if include_usage:
                yield chat_completion_chunk(rid, model, created, usage_counts=(
                    out.prompt_tokens, out.completion_tokens, out.cached_tokens))
