"""The HTTP API served from a host's own event loop: `baton --listen [HOST:]PORT` (the TUI and every OpenAI
client on one in-process engine, one batch, one priority scheme).

    listener = EmbeddedServer.bind("127.0.0.1", 8000, api_key=None)   # before the TUI starts: errors at once
    url = await listener.start(engine, store, runner)                 # once the model is loaded
    await listener.stop()                                             # before the engine shuts down

Unlike `serve`, it owns no signal (the host does: the TUI reads Ctrl-C as a key), configures no logging (the
TUI owns the terminal), runs no job runner of its own (it is handed the host's) and neither shuts the engine
down nor closes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from typing import TYPE_CHECKING, Iterator

import uvicorn

from .app import create_app
from .auth import check_bind
from .serve import bind_socket, socket_url
from .sse import SHUTDOWN_MARGIN_S
from .state import ServerSettings

if TYPE_CHECKING:
    from backend import Engine
    from storage import Store

    from ..jobs import JobRunner

DRAIN_TIMEOUT_S = 2.0  # s: requests in flight when the host quits (the host then cancels the rest itself)


class _HostedServer(uvicorn.Server):
    """uvicorn's server without its signal handlers (the host's stay in place)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class EmbeddedServer:
    """The HTTP API on a bound socket, started and stopped in the host's event loop.

    Args:
        sock: a bound socket (`bind`), listening only once `start` has run.
        api_key: the key every route but `/health` needs, or None.
    """

    def __init__(self, sock: socket.socket, api_key: str | None = None):
        self.sock, self.api_key = sock, api_key
        self.url = socket_url(sock)
        self._server: _HostedServer | None = None
        self._task: asyncio.Task | None = None
        self._app = None

    @classmethod
    def bind(cls, host: str, port: int, api_key: str | None = None) -> EmbeddedServer:
        """Check the address and bind it (port 0: any free one).

        Raises:
            ValueError: a non-loopback host without a key (`check_bind`'s message).
            OSError: the address cannot be bound (in use, not this machine's, no permission).
        """
        check_bind(host, api_key)
        return cls(bind_socket(host, port), api_key)

    async def start(self, engine: Engine, store: Store, runner: JobRunner | None) -> str:
        """Serve `engine` (started) until `stop`; returns the URL once uvicorn listens.

        Raises:
            RuntimeError: uvicorn stopped before it listened (e.g. the app's startup failed).
        """
        settings = ServerSettings(model_name=engine.model.name, api_key=self.api_key,
                                  drain_timeout_s=DRAIN_TIMEOUT_S)
        self._app = create_app(engine, store, settings, runner)
        config = uvicorn.Config(self._app, log_config=None, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=math.ceil(DRAIN_TIMEOUT_S + SHUTDOWN_MARGIN_S))
        self._server = _HostedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self.sock]), name="baton-listen")
        while not self._server.started:
            if self._task.done():
                raise RuntimeError(f"the server on {self.url} did not start")
            await asyncio.sleep(0.02)
        return self.url

    async def stop(self) -> None:
        """Drain (requests in flight get `DRAIN_TIMEOUT_S`), stop listening and wait for uvicorn. Idempotent;
        a server never started just closes its socket."""
        if self._server is None or self._task is None:
            self.sock.close()
            return
        self._app.state.baton.begin_drain()
        self._server.should_exit = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self._task
        self._server = self._task = None
        self.sock.close()
