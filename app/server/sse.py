"""Server-sent events as OpenAI streams them: one `data: <JSON chunk>` event per chunk, then `data: [DONE]`
(OpenAI API reference, "Streaming"; the official clients stop reading at `[DONE]`).

An error after the stream has started cannot change the status any more: it is sent as one
`data: {"error": {...}}` event (the official clients raise it as an `APIError`), then `[DONE]`, as vLLM does.
The response is `sse-starlette`'s: it notices a client that disconnects and closes the chunk generator (which
cancels the request), sends a comment line every 15 s so proxies keep an idle stream open, and on shutdown
lets the stream run for the server's drain time before it cuts it (`ServerState.begin_drain` ends it first).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse

from .errors import APIError

DONE = "[DONE]"
#: Seconds past the drain time before `sse-starlette` cuts a stream that has still not ended.
SHUTDOWN_MARGIN_S = 5.0


def event_stream(chunks: AsyncIterator[dict[str, Any]], drain_timeout_s: float) -> EventSourceResponse:
    """A `text/event-stream` response of `chunks` (JSON objects), ended by `[DONE]`.

    Args:
        chunks: the chunks; an `APIError` raised while iterating is sent as an error event.
        drain_timeout_s: the server's drain time (s): how long the stream may go on after a shutdown signal.
    """

    async def events() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield _dumps(chunk)
        except APIError as exc:
            yield _dumps(exc.body())
        yield DONE

    return EventSourceResponse(events(), sep="\n", shutdown_grace_period=drain_timeout_s + SHUTDOWN_MARGIN_S)


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))
