"""`respond`: the one body of the chat-completions and completions routes, from a parsed request to a response.

The model name is checked (404), the sampling values built (400 naming the field), the prompt opened on the
engine (`generation.open_generation`: intake errors become a status before any response starts), then either
a server-sent event stream of the route's chunks or, once the whole answer is there, the route's response
object. A client that leaves before the answer is ready gets `499` (nothing is sent; the request was
cancelled). Priority: the body's, `interactive` by default.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request, Response

from backend import Priority

from .generation import ClientGone, Generation, check_model, open_generation, sampling_params, until_disconnected
from .sse import event_stream

if TYPE_CHECKING:
    from backend import TokenOutput

#: the route's chunks: (generation, model, created, include_usage) -> the events' JSON objects
Chunks = Callable[[Generation, str, int, bool], AsyncIterator[dict]]
#: the route's whole answer: (generation, model, text, last output, created) -> the response object
Whole = Callable[[Generation, str, str, "TokenOutput", int], dict]


async def respond(request: Request, body: Any, prompt: Any, param: str, whole: Whole, chunks: Chunks) -> Any:
    """Run a parsed request (`body`: `model`, `sampling`, `priority`, `stream`, `include_usage`) on the engine.

    Args:
        prompt: what the engine takes (chat messages, a string, token ids); `param` names its body field in
            errors (`messages`, `prompt`).
    Returns:
        the response object, an event stream, or an empty `499` response when the client left first.
    Raises:
        APIError: unknown model (404), invalid values or an over-long prompt (400), shutting down (503).
    """
    state = request.app.state.baton
    model = check_model(state, body.model)
    params = sampling_params(body.sampling)
    priority = body.priority if body.priority is not None else Priority.INTERACTIVE
    try:
        gen = await open_generation(state, request, prompt, params, priority, param)
    except ClientGone:
        return Response(status_code=499)  # nobody is listening; the request was cancelled
    created = int(time.time())
    if body.stream:
        return event_stream(chunks(gen, model, created, body.include_usage), state.settings.drain_timeout_s)
    try:
        text, last = await until_disconnected(request, gen.collect())
    except ClientGone:
        return Response(status_code=499)
    return whole(gen, model, text, last, created)
