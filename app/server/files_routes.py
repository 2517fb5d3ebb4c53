"""The OpenAI Files API, for batch input files: `POST /v1/files`, `GET /v1/files`, `GET /v1/files/{file_id}`,
`GET /v1/files/{file_id}/content` (OpenAI API reference, "Files").

An upload is a multipart form with `file` and `purpose`; only `purpose: batch` is taken (the file is kept
whole in the store and checked when a batch is created from it). A batch's output and error files
(`app.server.batch_objects`) are read through the same routes. Errors: 400 for another purpose, a missing or
extra form field, a body that is not `multipart/form-data`; 404 for an unknown file id; 413 for a file over the
upload limit.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.datastructures import UploadFile

from .batch_objects import file_object, is_batch, no_file, output_content, output_file_object, output_kinds, \
    parse_file_id
from .body import too_large
from .errors import APIError
from .state import ServerState

router = APIRouter()
FORM_FIELDS = ("file", "purpose")


@router.post("/v1/files")
async def upload_file(request: Request) -> dict[str, Any]:
    """Store an uploaded batch input file; returns its `File` object."""
    state: ServerState = request.app.state.baton
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise APIError(400, "an upload is a multipart/form-data form with the fields file and purpose",
                       code="invalid_request")
    async with request.form(max_files=1, max_fields=len(FORM_FIELDS)) as form:
        unknown = sorted(set(form) - set(FORM_FIELDS))
        if unknown:
            raise APIError(400, f"form field(s) {', '.join(unknown)} not supported (only file and purpose)",
                           code="unsupported_parameter", param=unknown[0])
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose != "batch":
            raise APIError(400, f"purpose must be 'batch' (the only files this server takes), got {purpose!r}",
                           code="invalid_value", param="purpose")
        if not isinstance(upload, UploadFile):
            raise APIError(400, "the form needs a file field holding the file", code="invalid_value", param="file")
        content = await upload.read(state.settings.max_upload_bytes + 1)
        if len(content) > state.settings.max_upload_bytes:
            raise too_large(state.settings.max_upload_bytes)
        filename = upload.filename or "upload.jsonl"
    stored = await state.store.create_file(purpose, filename, content)
    return file_object(stored)


@router.get("/v1/files")
async def list_files(request: Request) -> dict[str, Any]:
    """Every uploaded file, newest first (a batch's output files are listed by its batch)."""
    files = await request.app.state.baton.store.list_files()
    return {"object": "list", "data": [file_object(f) for f in files], "has_more": False}


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, request: Request) -> dict[str, Any]:
    """A file's `File` object. Raises APIError 404 for an unknown id."""
    state: ServerState = request.app.state.baton
    kind, n = parse_file_id(file_id)
    if kind == "input":
        stored = await state.store.get_file(n)
        if stored is None:
            raise no_file(file_id)
        return file_object(stored)
    job, content = await _batch_output(state, kind, n, file_id)
    return output_file_object(job, kind, len(content))


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, request: Request) -> Response:
    """A file's bytes. Raises APIError 404 for an unknown id."""
    state: ServerState = request.app.state.baton
    kind, n = parse_file_id(file_id)
    if kind == "input":
        if await state.store.get_file(n) is None:
            raise no_file(file_id)
        content = await state.store.file_content(n)
    else:
        _, content = await _batch_output(state, kind, n, file_id)
    return Response(content, media_type="application/octet-stream")


async def _batch_output(state: ServerState, kind: str, job_id: int, text: str) -> tuple[Any, bytes]:
    """A batch's output or error file: `(job, content)`. Raises APIError 404 when it has no such file (yet)."""
    job = await state.store.get_job(job_id)
    if not is_batch(job) or kind not in output_kinds(job):
        raise no_file(text)
    return job, output_content(job, await state.store.list_items(job_id), kind)
