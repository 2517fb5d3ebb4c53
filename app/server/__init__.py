"""`baton serve`: Baton's engine behind an OpenAI-compatible HTTP API (FastAPI, uvicorn, sse-starlette).

Built on the chat core (`app.chat`: the request formats) and the job queue (`app.jobs`: the Batch API);
imports the engine only as `from backend import ...` and no Textual.

| module | owns |
| --- | --- |
| `app.py` | `create_app(engine, store, settings, runner=None)`: the FastAPI app, its middleware, routes and lifespan |
| `state.py` | `ServerSettings`; `ServerState`: what routes share, the requests in flight, the drain |
| `chat_route.py` | `POST /v1/chat/completions`, whole or streamed |
| `completions_route.py` | `POST /v1/completions` (a string or token ids) |
| `generation.py` | one request's run on the engine: intake errors as statuses, a client that leaves cancels it |
| `sse.py` | server-sent events as OpenAI streams them (`data: {chunk}`, `data: [DONE]`) |
| `status_routes.py` | `GET /health`, `GET /v1/models`, `GET /v1/baton/stats` |
| `metrics.py` | `GET /metrics` (Prometheus, vLLM's names with `baton:`), `MeteredEngine` (TTFT, TPOT, E2E) |
| `files_routes.py` | the Files API: upload, list, retrieve, content |
| `batches_routes.py` | the Batch API on the job queue: create, retrieve, list, cancel |
| `batch_objects.py` | the `File` and `Batch` objects and their ids, from the store's files and jobs |
| `auth.py` | the loopback rule for binding without a key; `BearerAuth` (401) |
| `body.py` | `BodyLimit` (413) and JSON bodies (400) |
| `errors.py` | `APIError` and OpenAI's error shape for every failure |
| `serve.py` | `serve(...)`: uvicorn on a bound socket, the store and engine around it, SIGTERM drains |
"""

from .app import create_app
from .state import ServerSettings, ServerState

__all__ = ["ServerSettings", "ServerState", "create_app"]
