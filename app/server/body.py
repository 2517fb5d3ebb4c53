"""Request bodies: the size limit (413) and JSON decoding (400).

`BodyLimit` refuses a body larger than its limit before any route reads it when `Content-Length` says so, and
otherwise while it is read (a chunked body is counted as it arrives), so a client cannot make the server hold
an unbounded body in memory. Uploads (`POST /v1/files`) have a limit of their own (a batch input file may be
up to 200 MB at OpenAI); every other body is a JSON request of at most `max_body_bytes`.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError

#: The path whose bodies are file uploads (multipart), with their own limit.
UPLOAD_PATH = "/v1/files"
#: Bytes a multipart upload adds around the file itself (boundaries, part headers, the purpose field).
MULTIPART_SLACK = 64 * 1024


def too_large(limit: int) -> APIError:
    return APIError(413, f"request body larger than {limit} bytes (the server's limit)", code="request_too_large")


class BodyLimit:
    """ASGI middleware: 413 `request_too_large` for a body over the limit of its path.

    Args:
        app: the application it guards.
        max_body_bytes: the most bytes of a JSON request body (bytes).
        max_upload_bytes: the most bytes of an uploaded file (bytes; the multipart body may exceed it by
            `MULTIPART_SLACK`).
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int):
        self.app = app
        self.max_body_bytes, self.max_upload_bytes = max_body_bytes, max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"] == UPLOAD_PATH
        limit = self.max_upload_bytes + MULTIPART_SLACK if upload else self.max_body_bytes
        shown = self.max_upload_bytes if upload else self.max_body_bytes
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await too_large(shown).send(send, {"Connection": "close"})
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise too_large(shown)  # raised inside the route: answered by the APIError handler
            return message

        await self.app(scope, counted, send)


async def read_json(request: Request) -> Any:
    """The request body decoded as JSON (UTF-8).

    Raises:
        APIError: 400 `invalid_json` for a body that is not UTF-8 JSON (or nested too deeply); 413 from
            `BodyLimit` while it is read.
    """
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise APIError(400, f"the request body is not valid JSON: {detail}", code="invalid_json") from None
