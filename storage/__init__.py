"""Baton's chat history and job queue in SQLite (imports nothing from `app` or `backend`).

`import storage` is cheap: the rows and errors are plain modules; `Store` (which pulls in
aiosqlite and sqlite3) is loaded on first access.

    from storage import Store, StorageError
    async with await Store.open(path) as store:   # path None -> the platform's user data dir
        chat = await store.create_chat("Hello")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import NotFoundError, StorageError
from .records import AFTER_SHOWN, Branch, Chat, Job, JobItem, Message, Placement, SearchHit, StoredFile

if TYPE_CHECKING:
    from .db import default_db_path
    from .migrations import LATEST as SCHEMA_VERSION
    from .store import Store

__all__ = ["AFTER_SHOWN", "Branch", "Chat", "Job", "JobItem", "Message", "NotFoundError", "Placement",
           "SCHEMA_VERSION", "SearchHit", "StorageError", "Store", "StoredFile", "default_db_path"]

_LAZY = {"Store": ("store", "Store"), "default_db_path": ("db", "default_db_path"),
         "SCHEMA_VERSION": ("migrations", "LATEST")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
