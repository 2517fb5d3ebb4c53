"""Baton's in-process BATON inference engine (imports nothing from `app` or `storage`).

Public API (everything the app uses comes from here, never from a submodule): `Engine`, `EngineProcess` (the
same API with the engine core in a child process), `ModelInfo` (its `model`), `make_engine` (the
one of the two a configuration asks for), `EngineConfig`,
`SamplingParams`, `Priority`, `TokenOutput`, `CompletionResult`, `RequestStatus`, `EngineStats`, `RowStats`,
`DeviceMemory`, `read_device_memory`, `load_model`, `LoadedModel`, `ModelLoadError`, `DEFAULT_MODEL`,
`PRESETS`, `COMPILE_MODES` (the values of `EngineConfig.compile`), `text_problem` (why a string is not valid UTF-8 text, the check every prompt goes through),
`ContextLengthError` (the `ValueError` for a prompt longer than the context), `freeze_startup_objects` /
`unfreeze_startup_objects` (a long-running process's start-up objects out of the garbage collector's scans).

The names are resolved lazily (PEP 562 module `__getattr__`): `from backend import SamplingParams` imports
only the torch-free `backend.config`, so a command line that validates options or prints `--help` never pays
for importing torch and transformers; `from backend import Engine` imports them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "COMPILE_MODES": "config", "DEFAULT_MODEL": "config", "EngineConfig": "config", "Priority": "config", "SamplingParams": "config",
    "CompletionResult": "engine", "Engine": "engine", "EngineProcess": "engine_proc", "ModelInfo": "engine_proc",
    "make_engine": "engine_proc",
    "PRESETS": "models", "LoadedModel": "models", "ModelLoadError": "models", "load_model": "models",
    "RequestStatus": "request", "TokenOutput": "request",
    "EngineStats": "stats", "RowStats": "stats",
    "DeviceMemory": "memory", "read_device_memory": "memory",
    "text_problem": "intake", "ContextLengthError": "intake",
    "freeze_startup_objects": "process_gc", "unfreeze_startup_objects": "process_gc",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines `name` on first use (PEP 562). Raises AttributeError otherwise."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'backend' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .config import COMPILE_MODES, DEFAULT_MODEL, EngineConfig, Priority, SamplingParams
    from .engine import CompletionResult, Engine
    from .engine_proc import EngineProcess, ModelInfo, make_engine
    from .intake import ContextLengthError, text_problem
    from .memory import DeviceMemory, read_device_memory
    from .models import PRESETS, LoadedModel, ModelLoadError, load_model
    from .process_gc import freeze_startup_objects, unfreeze_startup_objects
    from .request import RequestStatus, TokenOutput
    from .stats import EngineStats, RowStats
