"""`run_request`: one OpenAI Batch line run on the engine to its OpenAI Batch output line; what `baton batch`
and batch jobs both call.

The line's sampling arguments are validated by `backend.SamplingParams`; the request streams through
`engine.generate` at the given priority; the outcome is always an output line, never an exception for
bad input:
- a complete answer (`stop` / `length`): a success line with a `chat.completion` body and `usage`;
- invalid parameters, or a prompt the engine rejects (e.g. longer than the context): `invalid_value`;
- a request cancelled (by the caller, or the engine shutting down): `cancelled`;
- a generation that failed in the engine: `engine_error`.
Error messages start with `line N:` so they point into the input file.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from backend import Priority, SamplingParams

from .answer import is_complete
from .batch_file import BatchRequest, error_line, success_line

if TYPE_CHECKING:
    from backend import Engine


def _noop(*_: Any) -> None:
    return None


async def run_request(engine: Engine, request: BatchRequest, priority: Priority = Priority.BATCH, *,
                      may_start: Callable[[], bool] = lambda: True,
                      on_submit: Callable[[str, SamplingParams], None] = _noop,
                      on_token: Callable[[], None] = _noop,
                      on_end: Callable[[str], None] = _noop) -> dict[str, Any]:
    """Run one batch request and return its OpenAI Batch output line.

    Args:
        engine: a started engine.
        request: the parsed input line.
        priority: the scheduling class (`Priority.BATCH` for batch files and jobs).
        may_start: asked once the parameters are valid; False gives a `cancelled` line without submitting
            (a job that is stopping).
        on_submit(request_id, params): the request is about to be sent to the engine with these sampling
            parameters (a job counts its progress against `params.max_tokens`).
        on_token(): one output token arrived.
        on_end(request_id): the request is no longer in flight (called once for every `on_submit`).
    Returns:
        The output line (`error` None for a complete answer; else `{"code", "message"}` as listed above).
    """
    try:
        params = SamplingParams(**request.sampling)
    except (TypeError, ValueError) as exc:  # the engine's validation, naming the field
        return error_line(request.custom_id, "invalid_value", f"line {request.line_no}: {exc}")
    if not may_start():
        return error_line(request.custom_id, "cancelled", f"line {request.line_no}: not started")
    request_id = uuid.uuid4().hex
    parts: list[str] = []
    last = None
    on_submit(request_id, params)
    try:
        async for out in engine.generate(request.messages, params, priority=priority, request_id=request_id):
            parts.append(out.text)
            if out.token_id is not None:
                on_token()
            last = out
    except ValueError as exc:  # invalid prompt, e.g. longer than the context
        return error_line(request.custom_id, "invalid_value", f"line {request.line_no}: {exc}")
    finally:
        on_end(request_id)
    if is_complete(last.finish_reason):
        return success_line(request.custom_id, request_id, engine.model.name, "".join(parts), last.finish_reason,
                            last.prompt_tokens, last.completion_tokens, cached_tokens=last.cached_tokens)
    code = "cancelled" if last.finish_reason == "cancelled" else "engine_error"
    return error_line(request.custom_id, code, f"line {request.line_no}: generation "
                                               f"{last.finish_reason}: {last.error or 'no detail'}")
