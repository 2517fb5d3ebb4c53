"""Loading the model for the TUI off the UI thread (run as a Textual thread worker)."""

from __future__ import annotations

import time
from typing import Any, Callable

from backend import Engine, ModelLoadError

from .messages import ModelLoaded, ModelLoadFailed


def load_engine(engine: Engine, post: Callable[[Any], object], cancelled: Callable[[], bool]) -> None:
    """Start an engine, loading its model (blocking: call it from a thread), then post `ModelLoaded`.

    Args:
        engine: an engine that is not started yet.
        post: thread-safe message sink (a Textual `post_message`).
        cancelled: True when nobody wants the engine any more (the app closed while loading): it is then
            shut down again instead of posted.
    Raises:
        ModelLoadError (or whatever failed): after posting `ModelLoadFailed`, so the worker fails and the
        app notifies.
    """
    start = time.perf_counter()
    try:
        engine.start()
    except Exception as exc:  # ModelLoadError, or e.g. out of memory: shown, then reported by the worker
        post(ModelLoadFailed(str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"))
        raise
    if cancelled():
        engine.shutdown()
        return
    post(ModelLoaded(engine, time.perf_counter() - start))
