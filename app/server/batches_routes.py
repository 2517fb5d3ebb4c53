"""The OpenAI Batch API on Baton's persistent job queue: `POST /v1/batches`, `GET /v1/batches/{batch_id}`,
`GET /v1/batches`, `POST /v1/batches/{batch_id}/cancel` (OpenAI API reference, "Batch").

Creating a batch stores its input file's lines as a queued batch job (`app.jobs.submit_batch`; a malformed
line is an item that fails with that line's error, as in `baton batch`); the server's job runner runs it at
`Priority.BATCH`, so interactive requests go first. Each line's outcome is committed as it finishes, so a
batch survives a restart (or a kill) of the server and resumes with the lines not yet done. Objects and ids:
`app.server.batch_objects`.

Body of `POST /v1/batches`: `input_file_id` (an uploaded file of purpose `batch`), `endpoint` (only
`/v1/chat/completions`), `completion_window` (only `24h`; Baton never expires a batch), `metadata` (at most
16 string pairs, keys up to 64 characters, values up to 512). Any other field is a 400
`unsupported_parameter`. List: `after` (a batch id) and `limit` (1..100, default 20), newest first.
Cancelling a completed or failed batch is a 409 `invalid_state`; cancelling a cancelled one returns it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from storage import Job

from ..chat.completions import CHAT_COMPLETIONS_URL, RequestError, check_object
from ..jobs import submit_batch
from .batch_objects import BATCH_KEY, batch_object, is_batch, no_batch, no_file, parse_batch_id, parse_file_id
from .body import read_json
from .errors import APIError
from .state import ServerState

router = APIRouter()
BATCH_FIELDS = ("input_file_id", "endpoint", "completion_window", "metadata")
MAX_METADATA = 16


@router.post("/v1/batches")
async def create_batch(request: Request) -> dict[str, Any]:
    """Queue a batch of an uploaded file's requests; returns its `Batch` object (status `in_progress`)."""
    state: ServerState = request.app.state.baton
    body = _check_body(await read_json(request))
    kind, n = parse_file_id(body["input_file_id"]) if isinstance(body["input_file_id"], str) else ("", 0)
    stored = await state.store.get_file(n) if kind == "input" else None
    if stored is None:
        raise no_file(str(body["input_file_id"]))
    if stored.purpose != "batch":
        raise APIError(400, f"file {body['input_file_id']} was uploaded for {stored.purpose!r}, not 'batch'",
                       code="invalid_value", param="input_file_id")
    spec = {key: body.get(key) for key in BATCH_FIELDS}
    try:
        job = await submit_batch(state.store, await state.store.file_content(n), stored.filename,
                                 {BATCH_KEY: spec})
    except ValueError as exc:  # no request line
        raise APIError(400, f"file {body['input_file_id']}: {exc}", code="invalid_value",
                       param="input_file_id") from None
    return batch_object(job, state.settings.model_name)


def _check_body(body: Any) -> dict[str, Any]:
    try:
        body = check_object(body)
    except RequestError as exc:
        raise APIError(400, exc.message, code=exc.code, param=exc.param) from None
    unknown = sorted(set(body) - set(BATCH_FIELDS))
    if unknown:
        raise APIError(400, f"body.{unknown[0]} is not supported by baton", code="unsupported_parameter",
                       param=unknown[0])
    for key in ("input_file_id", "endpoint", "completion_window"):
        if body.get(key) is None:
            raise APIError(400, f"body.{key} is required", code="invalid_value", param=key)
    if body["endpoint"] != CHAT_COMPLETIONS_URL:
        raise APIError(400, f"body.endpoint must be {CHAT_COMPLETIONS_URL!r} (the only endpoint baton batches), "
                            f"got {body['endpoint']!r}", code="unsupported_parameter", param="endpoint")
    if body["completion_window"] != "24h":
        raise APIError(400, f"body.completion_window must be '24h', got {body['completion_window']!r}",
                       code="invalid_value", param="completion_window")
    _check_metadata(body.get("metadata"))
    return body


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not (isinstance(metadata, dict) and len(metadata) <= MAX_METADATA
            and all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                    for k, v in metadata.items())):
        raise APIError(400, f"body.metadata must be at most {MAX_METADATA} string pairs (keys up to 64 "
                            "characters, values up to 512)", code="invalid_value", param="metadata")


async def _require_batch(state: ServerState, text: str) -> Job:
    job = await state.store.get_job(parse_batch_id(text))
    if not is_batch(job):
        raise no_batch(text)
    return job


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(batch_id: str, request: Request) -> dict[str, Any]:
    """A batch's `Batch` object. Raises APIError 404 for an unknown id."""
    state: ServerState = request.app.state.baton
    return batch_object(await _require_batch(state, batch_id), state.settings.model_name)


@router.get("/v1/batches")
async def list_batches(request: Request, after: str | None = None, limit: int = 20) -> dict[str, Any]:
    """Batches newest first, `limit` of them after the batch `after`."""
    state: ServerState = request.app.state.baton
    if not 1 <= limit <= 100:
        raise APIError(400, f"limit must be in 1..100, got {limit}", code="invalid_value", param="limit")
    jobs = [job for job in await state.store.list_jobs() if is_batch(job)]
    if after is not None:
        after_id = parse_batch_id(after)
        jobs = [job for job in jobs if job.id < after_id]
    page = [batch_object(job, state.settings.model_name) for job in jobs[:limit]]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(jobs) > limit}


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request) -> dict[str, Any]:
    """Cancel a batch: its requests in flight are cancelled, its lines not done never run.

    Raises:
        APIError: 404 unknown id; 409 `invalid_state` for a completed or failed batch.
    """
    state: ServerState = request.app.state.baton
    job = await _require_batch(state, batch_id)
    if job.status != "cancelled":
        try:
            if job.status in ("done", "failed"):
                raise ValueError(job.status)
            job = await state.runner.cancel(job.id)
        except ValueError:  # finished (maybe just now)
            job = await _require_batch(state, batch_id)
            raise APIError(409, f"batch {batch_id} is {batch_object(job, '')['status']}: it cannot be "
                                "cancelled", code="invalid_state", param="batch_id") from None
    return batch_object(job, state.settings.model_name)

