"""Making and starting the TUI's engine off the UI thread, once the first frame is on screen.

`from backend import Engine` imports torch and transformers (seconds; 12 s on a busy machine), so nothing in
`app/tui` imports it at module level: the chat screen draws its first frame, then runs `load_engine` in a
daemon thread (`in_daemon_thread`), which imports the engine there, makes it from the configuration (or starts
the one it was given) and posts `ModelLoaded` or `ModelLoadFailed`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import platformdirs

from backend import EngineConfig

from .messages import ModelLoaded, ModelLoadFailed

if TYPE_CHECKING:
    from backend import Engine

T = TypeVar("T")


def load_engine(source: Engine | EngineConfig, post: Callable[[Any], object], cancelled: Callable[[], bool]) -> None:
    """Make (from a configuration) or take an engine, start it, loading its model, then post `ModelLoaded`.
    Blocking, for seconds: call it from a thread. The engine module, and with it torch, is imported here.

    Args:
        source: the configuration of the engine to make, or an engine that is not started yet.
        post: thread-safe message sink (a Textual `post_message`).
        cancelled: True when nobody wants the engine any more (the app closed while loading): it is then
            shut down again instead of posted.
    Raises:
        ModelLoadError (or whatever failed, e.g. torch that cannot be imported): after posting
        `ModelLoadFailed`, so the worker fails and the app notifies.
    """
    start = time.perf_counter()
    try:
        from backend import ModelLoadError, make_engine  # torch and transformers are imported here, in this thread
    except Exception as exc:  # a broken install: reported as a model that cannot be loaded
        post(ModelLoadFailed(f"cannot import the engine: {type(exc).__name__}: {exc}"))
        raise
    try:
        engine = make_engine(source, engine_log_path()) if isinstance(source, EngineConfig) else source
        engine.start()
    except Exception as exc:  # ModelLoadError, or e.g. out of memory: shown, then reported by the worker
        post(ModelLoadFailed(str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"))
        raise
    if cancelled():
        engine.shutdown()
        return
    post(ModelLoaded(engine, time.perf_counter() - start))


def engine_log_path() -> Path:
    """`<platformdirs user log dir of baton>/engine.log` (the folder created): where the TUI's engine process
    writes its standard output and error (warnings, the model's conversion progress, a crash's traceback), which
    would otherwise draw over the screen.

    Raises:
        OSError: the folder cannot be created (e.g. no permission).
    """
    folder = Path(platformdirs.user_log_dir("baton", appauthor=False))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "engine.log"


async def in_daemon_thread(work: Callable[[], T], name: str = "baton-model-load") -> T:
    """Run blocking `work()` in a daemon thread of its own and wait for its result (or exception).

    Unlike a Textual thread worker (asyncio's default executor, which `asyncio.run` joins before it returns),
    a model still loading never holds up quitting. Cancelling the wait leaves the thread to finish alone.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result, error = None, None
        try:
            result = work()
        except BaseException as exc:  # handed to the waiting task, which raises it
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the event loop has closed (the app is gone): nobody waits any more
            pass

    threading.Thread(target=run, name=name, daemon=True).start()
    return await done
