"""Who may use the server: the loopback rule for binding, and the API key every route but `/health` needs.

- `check_bind(host, api_key)`: a server without a key binds only to a loopback address (127.0.0.0/8, ::1,
  `localhost`); any other host (`0.0.0.0`, a LAN address, a name that resolves elsewhere) needs a key, or
  anyone who can reach the port could use the engine.
- `BearerAuth`: with a key, every request but `GET /health` must carry `Authorization: Bearer <key>`
  (OpenAI's scheme, what the official clients send); otherwise 401 `invalid_api_key` in OpenAI's shape, with
  `WWW-Authenticate: Bearer` (RFC 6750). The key is compared with `hmac.compare_digest`, in time that does not
  depend on where the bytes differ.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import APIError

#: Paths anyone may read, key or not (a load balancer's health check has no key).
OPEN_PATHS = frozenset({"/health"})


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback address (`localhost` and names are resolved; a name
    that does not resolve is not loopback)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to serve a non-loopback host without an API key.

    Raises:
        ValueError: `--host <host>: ...`, saying how to give a key or bind to loopback.
    """
    if api_key is None and not is_loopback(host):
        raise ValueError(f"--host {host}: refusing to serve on an address other machines can reach without an "
                         "API key; give one with --api-key KEY (or BATON_API_KEY), or bind to 127.0.0.1")


class BearerAuth:
    """ASGI middleware: 401 for a request without the right `Authorization: Bearer <key>` (paths in
    `OPEN_PATHS` excepted).

    Args:
        app: the application it guards.
        api_key: the key (non-empty).
    """

    def __init__(self, app: ASGIApp, api_key: str):
        if not api_key:
            raise ValueError("api_key: must not be empty")
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if given is not None and hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        message = ("missing API key: send it as 'Authorization: Bearer <key>'" if given is None
                   else "incorrect API key provided")
        await APIError(401, message, code="invalid_api_key").send(send, {"WWW-Authenticate": "Bearer"})
