"""One HTTP request's generation on the engine, shared by the chat-completions and completions routes.

`open_generation` tokenizes the prompt in a worker thread (`Engine.tokenize`: the chat template, the same ids
the engine would make; a long prompt does not stall the event loop and every stream on it), submits the
token ids and waits for the first output, so every error a request can have at intake (invalid values, a
prompt longer than the context) is answered with a status before any response starts. A client that
disconnects while the request waits, or while a non-streaming answer is generated, cancels it at once
(`until_disconnected`); a streaming response's disconnect is noticed by `sse-starlette`, which closes the
generator, which cancels the request (its row leaves the batch in the engine's next iteration).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request

from backend import Priority, SamplingParams

from .errors import SERVER_ERROR, APIError, from_value_error, shutting_down

if TYPE_CHECKING:
    from backend import TokenOutput

    from .state import ServerState

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the answer was ready (nothing is sent back)."""


async def until_disconnected(request: Request, awaitable: Awaitable[T]) -> T:
    """Await `awaitable`, or cancel it as soon as the client disconnects.

    Raises:
        ClientGone: the client went away first (the awaitable was cancelled).
    """
    work = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
    if work.cancelled():
        raise ClientGone()
    return work.result()


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the body has been read: the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def sampling_params(kwargs: dict[str, Any]) -> SamplingParams:
    """`SamplingParams(**kwargs)`. Raises APIError: 400 naming the field (`temperature: must be >= 0`)."""
    try:
        return SamplingParams(**kwargs)
    except (TypeError, ValueError) as exc:
        raise from_value_error(ValueError(str(exc))) from None


def check_model(state: ServerState, model: str | None) -> str:
    """The served model's name. Raises APIError: 404 `model_not_found` for a request naming another model."""
    name = state.settings.model_name
    if model is not None and model != name:
        raise APIError(404, f"the model {model!r} does not exist: this server serves {name!r} (GET /v1/models)",
                       code="model_not_found", param="model")
    return name


@dataclass
class Generation:
    """A request submitted to the engine, its first output already received.

    Attributes:
        request_id: the engine's id (the response's id is `chatcmpl-<id>` / `cmpl-<id>`).
        first: the first output (a token, or the end of a request that failed or was cancelled at once).
    """

    request_id: str
    first: TokenOutput
    _state: ServerState
    _outputs: AsyncIterator[TokenOutput]

    async def outputs(self) -> AsyncIterator[TokenOutput]:
        """Every output, the first included; leaving early (or being closed) cancels the request."""
        try:
            yield self.first
            if not self.first.finished:
                async for out in self._outputs:
                    yield out
        finally:
            await self.close()

    async def collect(self) -> tuple[str, TokenOutput]:
        """The whole text and the last output (with the finish reason and the token counts)."""
        parts, last = [], self.first
        async for out in self.outputs():
            parts.append(out.text)
            last = out
        return "".join(parts), last

    async def close(self) -> None:
        """Cancel the request if it is still running, and stop counting it as in flight."""
        self._state.in_flight.discard(self.request_id)
        await self._outputs.aclose()

    def finish_reason(self, out: TokenOutput) -> str:
        """The OpenAI finish reason of a request's last output: `stop` or `length`; a request the drain
        cancelled ends `length` (cut short).

        Raises:
            APIError: 500 for a generation that failed in the engine; 503 for one cancelled because the engine
                is shutting down.
        """
        if out.finish_reason in ("stop", "length"):
            return out.finish_reason
        if out.finish_reason == "cancelled" and self._state.draining:
            return "length"
        if out.finish_reason == "cancelled":
            raise shutting_down("the request was cancelled because the engine is shutting down")
        raise APIError(500, f"the generation failed in the engine: {out.error or 'no detail'}", type=SERVER_ERROR)


async def open_generation(state: ServerState, request: Request, prompt: Any, params: SamplingParams,
                          priority: Priority, prompt_param: str) -> Generation:
    """Submit a request and wait for its first output (cancelled if the client goes away meanwhile).

    Args:
        state: the server.
        request: the HTTP request (watched for a disconnect).
        prompt: chat messages, a string or token ids (`Engine.generate`).
        params: its sampling parameters.
        priority: its scheduling class.
        prompt_param: the body field an invalid prompt is reported under (`messages`, `prompt`).
    Raises:
        APIError: 400 for a prompt the engine refuses (`context_length_exceeded` when it is longer than the
            context); 503 while draining or once the engine has stopped.
        ClientGone: the client disconnected first.
    """
    if state.draining:
        raise shutting_down()
    try:  # off the event loop: a long prompt must not stall every other stream while it is tokenized
        token_ids = await until_disconnected(request, asyncio.to_thread(state.engine.tokenize, prompt))
    except ValueError as exc:
        raise from_value_error(exc, prompt_param) from None
    request_id = uuid.uuid4().hex
    outputs = state.engine.generate(token_ids, params, priority=priority, request_id=request_id)
    state.in_flight.add(request_id)
    try:
        first = await until_disconnected(request, anext(outputs))
    except BaseException as exc:
        state.in_flight.discard(request_id)
        await outputs.aclose()
        if isinstance(exc, ValueError):
            raise from_value_error(exc, prompt_param) from None
        if isinstance(exc, RuntimeError):  # the engine is not running
            raise shutting_down(f"the engine is not running ({exc})") from None
        raise
    gen = Generation(request_id, first, state, outputs)
    if first.finished:
        try:
            gen.finish_reason(first)  # a request that failed at once is a status, not a stream of one error
        except APIError:
            await gen.close()
            raise
    return gen
