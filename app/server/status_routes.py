"""What the server serves and how it is doing: `GET /health`, `GET /v1/models`, `GET /v1/models/{model}`,
`GET /v1/baton/stats`.

- `/health` (no key needed): 200 `{"status": "ok"}` while the engine runs; 503 in OpenAI's error shape while
  the server drains or after the engine stopped (a load balancer takes it out of rotation).
- `/v1/models`: OpenAI's model list with the one served model (`Model`: id, `object: "model"`, created,
  owned_by), plus vLLM's `max_model_len` (tokens).
- `/v1/baton/stats`: the engine's stats snapshot (`backend.EngineStats`, what the TUI's live panel shows) as
  JSON, with `batch_size`, `queue_depth` and `rows_by_state` added; each row and waiting request has its
  `request_id` (a response's id without its `chatcmpl-` / `cmpl-` prefix).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request

from .errors import APIError, shutting_down
from .state import ServerState

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, str]:
    """200 while the server takes requests. Raises APIError 503 while draining or once the engine stopped."""
    state: ServerState = request.app.state.baton
    if state.draining:
        raise shutting_down()
    if not state.engine.started:
        raise shutting_down("the engine is not running")
    return {"status": "ok"}


def _model(state: ServerState) -> dict[str, Any]:
    return {"id": state.settings.model_name, "object": "model", "created": state.started, "owned_by": "baton",
            "max_model_len": state.engine.max_model_len}


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The served model, as OpenAI's list of models."""
    return {"object": "list", "data": [_model(request.app.state.baton)]}


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, request: Request) -> dict[str, Any]:
    """The served model. Raises APIError 404 `model_not_found` for another name."""
    state: ServerState = request.app.state.baton
    if model != state.settings.model_name:
        raise APIError(404, f"the model {model!r} does not exist", code="model_not_found", param="model")
    return _model(state)


@router.get("/v1/baton/stats")
async def engine_stats(request: Request) -> dict[str, Any]:
    """The engine's stats snapshot as JSON (see the module docstring)."""
    stats = request.app.state.baton.engine.stats()
    return {**dataclasses.asdict(stats), "batch_size": stats.batch_size, "queue_depth": stats.queue_depth,
            "rows_by_state": stats.rows_by_state()}
