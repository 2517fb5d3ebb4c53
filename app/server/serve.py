"""`serve`: run the HTTP API of a started engine under uvicorn until a signal, then drain and stop.

    sock = bind_socket("127.0.0.1", 8000)         # before the model loads: a port in use fails at once
    engine = ...started engine...
    status = serve(engine, sock, db=None, settings=ServerSettings(model_name=...))

The store is opened in the server's event loop (aiosqlite) and closed after it; the engine is shut down last.
SIGTERM or Ctrl-C (SIGINT) starts the drain (`ServerState.begin_drain`): the listening socket closes, new
requests on open connections get 503, the job runner stops (a running batch goes back to `queued`), requests
in flight get `drain_timeout_s` to finish and are then cut with finish reason `length`. uvicorn waits for the
connections to close, `SHUTDOWN_MARGIN_S` past the drain time at most. A second Ctrl-C quits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import socket
import sys
from types import FrameType
from typing import TYPE_CHECKING, TextIO

import uvicorn

from storage import Store

from .app import create_app
from .sse import SHUTDOWN_MARGIN_S
from .state import ServerSettings, ServerState

if TYPE_CHECKING:
    from backend import Engine


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port` (0: any free port), not yet listening (uvicorn listens once the app
    is up, so a client is refused, not kept waiting, until then).

    Raises:
        OSError: the address cannot be bound (in use, not this machine's, no permission).
    """
    family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def socket_url(sock: socket.socket) -> str:
    """`http://HOST:PORT` of a bound socket (the port it really got)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def check_store(db: str | None) -> None:
    """Open and close the store once, so an unusable database is refused before the model loads.

    Raises:
        StorageError: the database cannot be used (the message names it).
    """
    store = await Store.open(db)
    await store.close()


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, which on SIGTERM / SIGINT also starts the app's drain, and returns instead of
    re-raising the signal once it has shut down (so the store and the engine are closed properly)."""

    def __init__(self, config: uvicorn.Config, on_exit) -> None:
        super().__init__(config)
        self.on_exit = on_exit
        self.signals: list[int] = []

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self.signals.append(sig)
        captured = getattr(self, "_captured_signals", None)  # uvicorn >= 0.29 re-raises these after serve()
        if isinstance(captured, list):
            captured.clear()  # serve() returns instead; serve's caller turns the signal into an exit status
        self.on_exit()


def serve(engine: Engine, sock: socket.socket, db: str | None, settings: ServerSettings,
          log: TextIO | None = None) -> int:
    """Serve until SIGTERM or Ctrl-C, then drain; shut the engine down.

    Args:
        engine: a started engine (shut down here, at the end).
        sock: the bound socket (`bind_socket`).
        db: the store's path (None: the default database).
        settings: the server's settings.
        log: where the "serving on" line goes (default: stderr).
    Returns:
        0 after SIGTERM (a clean drain), 130 after Ctrl-C, 1 when uvicorn could not start (it logged why).
    Raises:
        StorageError: the store cannot be opened.
    """
    try:
        server = asyncio.run(_serve(engine, sock, db, settings, log or sys.stderr))
    finally:
        engine.shutdown()
    if not server.started:
        return 1
    return 130 if signal.SIGINT in server.signals else 0


async def _serve(engine: Engine, sock: socket.socket, db: str | None, settings: ServerSettings,
                 log: TextIO) -> _DrainingServer:
    store = await Store.open(db)
    try:
        app = create_app(engine, store, settings)
        loop = asyncio.get_running_loop()
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s + SHUTDOWN_MARGIN_S))
        server = _DrainingServer(config, lambda: loop.call_soon_threadsafe(_drain, app.state.baton, log))
        announce = asyncio.create_task(_announce(server, sock, settings, log))
        try:
            await server.serve(sockets=[sock])
        finally:
            announce.cancel()
        return server
    finally:
        await store.close()


def _drain(state: ServerState, log: TextIO) -> None:
    """Start the drain (on the event loop), saying so once."""
    if not state.draining:
        with contextlib.suppress(OSError, ValueError):
            print(f"baton: shutting down: {len(state.in_flight)} requests in flight get up to "
                  f"{state.settings.drain_timeout_s:g} s to finish; running batches stay queued", file=log, flush=True)
    state.begin_drain()


async def _announce(server: uvicorn.Server, sock: socket.socket, settings: ServerSettings, log: TextIO) -> None:
    """Say where the server listens once it does (tests and scripts read the port from this line)."""
    while not server.started:
        await asyncio.sleep(0.05)
    with contextlib.suppress(OSError, ValueError):  # stderr closed: nothing to tell
        print(f"baton: serving {settings.model_name} on {socket_url(sock)} (OpenAI API at /v1; Ctrl-C stops)",
              file=log, flush=True)
