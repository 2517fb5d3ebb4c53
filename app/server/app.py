"""`create_app`: the OpenAI-compatible HTTP API of one engine and one store, as a FastAPI application.

    app = create_app(engine, store, ServerSettings(model_name="smollm2-135m-instruct"))

The app does not own the engine or the store: whoever made them (`app.server.serve`, or later the TUI serving
its own engine) starts them before and closes them after. Without a `runner` the app runs a `JobRunner` of
its own for the Batch API while it is up (its lifespan); a host that already runs one passes it.

Middleware, outermost first: `BearerAuth` (with an API key: 401 before anything else), `BodyLimit` (413).
Routes: `chat_route`, `completions_route`, `status_routes` (models, health, stats), `metrics`,
`files_routes`, `batches_routes`. Every error is in OpenAI's shape (`errors.install_handlers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import FastAPI

from . import batches_routes, chat_route, completions_route, files_routes, metrics, status_routes
from .auth import BearerAuth
from .body import BodyLimit
from .errors import install_handlers
from .state import ServerSettings, ServerState

if TYPE_CHECKING:
    from backend import Engine
    from storage import Store

    from ..jobs import JobRunner

log = logging.getLogger(__name__)
#: Seconds between two restarts of a job runner that failed (e.g. the store was locked for too long).
RUNNER_RETRY_S = 5.0


def create_app(engine: Engine, store: Store, settings: ServerSettings, runner: JobRunner | None = None) -> FastAPI:
    """The HTTP API of `engine` and `store`.

    Args:
        engine: a started engine (the app never shuts it down).
        store: an open store, for uploaded files and batch jobs (the app never closes it).
        settings: the server's settings (model name, API key, limits, drain time).
        runner: a job runner its host already runs; None: the app runs its own while it is up.
    Returns:
        The FastAPI application; `app.state.baton` is its `ServerState` (`begin_drain()` starts a shutdown).
    """
    state = ServerState.create(engine, store, settings, runner)
    own_runner = runner is None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if own_runner:
            state.runner_task = asyncio.create_task(_run_jobs(state), name="baton-server-jobs")
        try:
            yield
        finally:
            if state.runner_task is not None:
                state.stop_jobs()
                await asyncio.gather(state.runner_task, return_exceptions=True)

    app = FastAPI(title="Baton", summary="An OpenAI-compatible API on Baton's in-process engine",
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.baton = state
    install_handlers(app)
    for module in (chat_route, completions_route, status_routes, metrics, files_routes, batches_routes):
        app.include_router(module.router)
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes, max_upload_bytes=settings.max_upload_bytes)
    if settings.api_key is not None:
        app.add_middleware(BearerAuth, api_key=settings.api_key)  # added last: runs first
    return app


async def _run_jobs(state: ServerState) -> None:
    """Run queued jobs as they come, until cancelled; a runner that fails is logged and started again."""
    while True:
        try:
            await state.runner.run_queued(watch=True, poll_s=state.settings.job_poll_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the job runner failed; starting it again in %.0f s", RUNNER_RETRY_S)
            await asyncio.sleep(RUNNER_RETRY_S)
