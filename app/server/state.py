"""`ServerState`: what the routes of one server share (the engine, the store, the job runner, the metrics,
its settings), the HTTP requests in flight, and the drain that ends them on shutdown.

Drain (`begin_drain`, on SIGTERM or Ctrl-C): new requests get 503; the job runner stops at once, so a batch's
requests in flight are cancelled and their items stay pending, to run when a server opens the store again
(the job goes back to `queued`); HTTP requests in flight keep running for up to `drain_timeout_s`, and any
still running then are cancelled in the engine, so their streams end with a finish reason (`length`: cut
short) and `data: [DONE]` rather than a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..jobs import JobRunner
from .metrics import MeteredEngine, ServerMetrics

if TYPE_CHECKING:
    from backend import Engine
    from storage import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings:
    """How a server behaves.

    Attributes:
        model_name: the name the model is served under (`/v1/models`, each response's `model`; a request
            naming another model gets 404).
        api_key: the key every route but `/health` needs (`Authorization: Bearer <key>`), or None for none.
        max_body_bytes: the most bytes of a JSON request body (bytes; more: 413).
        max_upload_bytes: the most bytes of an uploaded file (bytes; OpenAI's batch input limit, 200 MB).
        drain_timeout_s: how long requests in flight may run after a shutdown signal (s).
        job_poll_s: how often the job runner looks for new batches while idle (s).
    """

    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 16 * 2**20
    max_upload_bytes: int = 200 * 10**6
    drain_timeout_s: float = 30.0
    job_poll_s: float = 0.5

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key: must not be empty")
        for name in ("max_body_bytes", "max_upload_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1 byte")
        if not self.drain_timeout_s >= 0:
            raise ValueError(f"drain_timeout_s: must be >= 0 seconds, got {self.drain_timeout_s}")


@dataclass
class ServerState:
    """The shared state of one server (`app.state.baton`).

    Attributes:
        engine: the engine, metered (`MeteredEngine`): use it for every request.
        store: the open store (files, batch jobs).
        runner: the job runner that runs batches (the server's own, or its host's, e.g. a TUI's).
        settings: the server's settings.
        metrics: its Prometheus registry.
        started: Unix time the server started (s; `/v1/models`' `created`).
        draining: a shutdown has begun: new requests are refused.
        in_flight: engine request ids of the HTTP requests running now.
    """

    engine: MeteredEngine
    store: Store
    runner: JobRunner
    settings: ServerSettings
    metrics: ServerMetrics
    started: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False
    in_flight: set[str] = field(default_factory=set)
    runner_task: asyncio.Task | None = None

    @classmethod
    def create(cls, engine: Engine, store: Store, settings: ServerSettings,
               runner: JobRunner | None = None) -> ServerState:
        """The state of a server on `engine` and `store`; without a `runner`, one of its own on the metered
        engine (started by the app's lifespan)."""
        metrics = ServerMetrics(engine, settings.model_name)
        metered = MeteredEngine(engine, metrics)
        return cls(metered, store, runner or JobRunner(store, metered), settings, metrics)

    def begin_drain(self) -> None:
        """Start draining (idempotent; call on the event loop): refuse new requests, stop the job runner, and
        cancel the HTTP requests still in flight after `drain_timeout_s`."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: %d requests in flight, %.0f s to finish", len(self.in_flight),
                 self.settings.drain_timeout_s)
        self.stop_jobs()
        asyncio.get_running_loop().call_later(self.settings.drain_timeout_s, self.cancel_in_flight)

    def cancel_in_flight(self) -> None:
        """Cancel every HTTP request still in flight: each ends `cancelled` in the engine, and its route ends
        the answer with finish reason `length`."""
        for request_id in list(self.in_flight):
            with contextlib.suppress(KeyError):  # finished meanwhile
                self.engine.cancel(request_id)

    def stop_jobs(self) -> None:
        """Cancel the job runner's task: a running batch's requests are cancelled, its items stay pending and
        the job goes back to `queued` (`JobRunner.run_queued`)."""
        if self.runner_task is not None:
            self.runner_task.cancel()
