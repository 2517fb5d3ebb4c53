"""Plain GETs against the server (blocking, standard library): its models, and what it reports about its engine.

Only the answer stream goes through `openai`; these small reads run in `RemoteEngine.start` and in the stats
thread, where a synchronous request is what is wanted.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class RemoteUnavailable(ConnectionError):
    """The server cannot be used: not reachable (connection refused, timeout, name not found), the key refused
    (401/403), no model served, or an answer that is not OpenAI's. The message names the URL and the cause."""


def get(url: str, api_key: str | None, timeout_s: float) -> tuple[int, bytes]:
    """GET `url` with `Authorization: Bearer api_key` (when given).

    Args:
        timeout_s: seconds for the connection and for each read.
    Returns:
        (HTTP status, body bytes); a 4xx/5xx is returned, not raised.
    Raises:
        RemoteUnavailable: no HTTP answer at all (refused, timed out, unknown host, TLS failure).
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RemoteUnavailable(f"cannot reach {url}: {reason}") from exc


def get_json(url: str, api_key: str | None, timeout_s: float) -> Any:
    """GET `url` and decode its JSON body.

    Raises:
        RemoteUnavailable: no answer, a status other than 200 (401/403 named as a refused key), or a body that
            is not JSON.
    """
    status, body = get(url, api_key, timeout_s)
    if status in (401, 403):
        raise RemoteUnavailable(f"{url} refused the API key (HTTP {status}): pass --api-key or set OPENAI_API_KEY")
    if status != 200:
        raise RemoteUnavailable(f"{url} answered HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise RemoteUnavailable(f"{url} did not answer JSON: {body[:200].decode('utf-8', 'replace')}") from exc


def served_models(api_url: str, api_key: str | None, timeout_s: float) -> list[dict[str, Any]]:
    """The entries of `GET {api_url}/models` (OpenAI's list: each has an `id`; vLLM and Baton add
    `max_model_len`).

    Raises:
        RemoteUnavailable: as `get_json`, or not a list of models.
    """
    listing = get_json(f"{api_url}/models", api_key, timeout_s)
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
        raise RemoteUnavailable(f"{api_url}/models is not an OpenAI list of models")
    return data
