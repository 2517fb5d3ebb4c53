"""Baton's in-process BATON inference engine (no Textual, no SQLite in here)."""
from .config import DEFAULT_MODEL, EngineConfig, Priority, SamplingParams
from .models import LoadedModel, ModelLoadError, load_model
