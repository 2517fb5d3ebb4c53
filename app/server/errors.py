"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the HTTP status that fits.

Statuses and codes (OpenAI API reference, "Error codes"; the types are OpenAI's):
- 400 `invalid_request_error`: a body that is not JSON or not an object, an invalid value
  (`invalid_value`), an unsupported field or value (`unsupported_parameter`: never silently ignored), a
  prompt longer than the context (`context_length_exceeded`);
- 401 `invalid_request_error` / `invalid_api_key`: a missing or wrong `Authorization: Bearer` key;
- 404 `invalid_request_error`: an unknown model (`model_not_found`), file, batch or route (`not_found`);
- 405 `invalid_request_error` / `method_not_allowed`; 409 `invalid_request_error` / `invalid_state` (a batch
  that can no longer be cancelled); 413 `invalid_request_error` / `request_too_large`;
- 500 `server_error`: a generation that failed in the engine, or a bug (logged with its traceback);
- 503 `server_error` / `server_shutting_down`: the server is draining, or the engine has stopped.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from backend import ContextLengthError

from ..chat.completions import RequestError

log = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"
_FIELD = re.compile(r"(\w+): ")


class APIError(Exception):
    """An error answered in OpenAI's shape.

    Args:
        status: the HTTP status.
        message: what is wrong, for people.
        type: OpenAI's error type (`invalid_request_error`, `server_error`).
        code: OpenAI's machine-readable code, or None.
        param: the request field at fault, or None.
    """

    def __init__(self, status: int, message: str, *, type: str = INVALID_REQUEST, code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict[str, Any]:
        """The JSON body: `{"error": {"message", "type", "param", "code"}}`."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)

    async def send(self, send: Send, headers: dict[str, str] | None = None) -> None:
        """Answer with this error from ASGI middleware (before any route runs)."""
        body = json.dumps(self.body()).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": self.status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


def from_request_error(exc: RequestError) -> APIError:
    """400 for a body `app.chat` refused (its code and param kept)."""
    return APIError(400, exc.message, code=exc.code, param=exc.param)


def from_value_error(exc: ValueError, prompt_param: str = "messages") -> APIError:
    """400 for what the engine refused: `context_length_exceeded` (`backend.ContextLengthError`, param
    `prompt_param`), else `invalid_value` whose param is the field the engine's message starts with
    (`temperature: must be >= 0` -> `temperature`; `prompt: ...` -> `prompt_param`)."""
    text = str(exc)
    m = _FIELD.match(text)
    param = m.group(1) if m else None
    if param == "prompt":
        param = prompt_param
    if isinstance(exc, ContextLengthError):
        return APIError(400, text, code="context_length_exceeded", param=prompt_param)
    return APIError(400, text, code="invalid_value", param=param)


def shutting_down(what: str = "the server is shutting down") -> APIError:
    """503 for a request that arrives while the server drains (or after the engine stopped)."""
    return APIError(503, f"{what}: try again later", type=SERVER_ERROR, code="server_shutting_down")


def install_handlers(app: FastAPI) -> None:
    """Answer every error of `app` in OpenAI's shape: `APIError`s, Starlette's 404/405, FastAPI's validation
    errors (400), and anything unexpected (500, logged)."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
        return from_request_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        message = (f"{request.method} {request.url.path}: no such route" if exc.status_code == 404
                   else str(exc.detail))
        return APIError(exc.status_code, message, code=codes.get(exc.status_code)).response(
            getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return APIError(400, f"{param or 'request'}: {first.get('msg', 'invalid')}", code="invalid_value",
                        param=param).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type=SERVER_ERROR).response()
