"""Baton on a remote engine: `RemoteEngine`, the `app.chat.engine_api.ChatEngine` that streams from any
OpenAI-compatible server (vLLM, SGLang, llama.cpp's `llama-server`, Ollama, another `baton serve`) through the
official `openai` package, instead of loading a model in this process.

Imports: `app.chat`, `backend`'s torch-free public names, `openai`, the standard library and
`prometheus_client`'s text parser (a vLLM server's `/metrics`); nothing of the front ends, the job runner, the
server or the store. The CLI imports it only inside `engine_options.start_engine` when `--backend` is given.
"""

from .engine import RemoteEngine, RemoteModel, RemoteUnavailable

__all__ = ["RemoteEngine", "RemoteModel", "RemoteUnavailable"]
