"""Baton's in-process BATON inference engine (imports nothing from `app` or `storage`).

Public API: `Engine`, `EngineConfig`, `SamplingParams`, `Priority`, `TokenOutput`, `CompletionResult`,
`EngineStats`, `RowStats`, `load_model`, `ModelLoadError`, `DEFAULT_MODEL`, `PRESETS`.
"""

from .config import DEFAULT_MODEL, EngineConfig, Priority, SamplingParams
from .engine import CompletionResult, Engine
from .models import PRESETS, LoadedModel, ModelLoadError, load_model
from .request import RequestStatus, TokenOutput
from .stats import EngineStats, RowStats

__all__ = [
    "DEFAULT_MODEL", "PRESETS", "CompletionResult", "Engine", "EngineConfig", "EngineStats", "LoadedModel",
    "ModelLoadError", "Priority", "RequestStatus", "RowStats", "SamplingParams", "TokenOutput", "load_model",
]
