"""`RemoteEngine`: the `ChatEngine` that streams answers from an OpenAI-compatible server.

Usage:
    engine = RemoteEngine("http://gpu-box:8000", api_key="KEY").start()   # GET /v1/models: the model
    async for out in engine.generate(messages, SamplingParams(max_tokens=64)): print(out.text, end="")
    engine.shutdown()

Every request is one streamed chat completion (`stream=True`, `stream_options={"include_usage": True}`) read
by a task of its own, which puts `TokenOutput`s on the request's queue: one per text delta, `token_id`
`REMOTE_TOKEN_ID` (ids do not cross the wire), then a closing item with the finish reason and the server's
usage. `cancel` (from any thread) cancels that task, which closes the HTTP stream (a `baton serve` or vLLM then
drops the row), and ends the stream with `cancelled`.

Faults after the request was accepted for streaming (connection refused, timeout, a 5xx, a stream cut
mid-answer or ended without a finish reason) end the stream with `finish_reason="error"` and a message
naming the URL; the text already streamed stays with the caller (the TUI stores it as interrupted). A 4xx
(a prompt over the context, an invalid value) is the caller's mistake, raised as `ValueError` on the first
iteration as the in-process engine does.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import openai

from backend import Priority, RowStats, SamplingParams, TokenOutput, EngineStats

from ..chat.engine_api import REMOTE_TOKEN_ID
from .probe import RemoteUnavailable, get, get_json, served_models
from .stats import LABELS, ClientRates, from_baton, vllm_gauges
from .wire import fault_message, request_fields

FINISH_REASONS = {"stop": "stop", "length": "length"}  # others (content_filter, tool_calls...) end as "stop"


@dataclass(frozen=True)
class RemoteModel:
    """The served model: `name` (its id on the server), `device` (`remote URL`: no device memory to read here)."""

    name: str
    device: str = "remote"


@dataclass
class _Live:
    """One request in flight: its loop, queue and reading task, and what was streamed so far."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    task: asyncio.Task | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # the server's `usage.prompt_tokens_details.cached_tokens` (0 when it does not say)
    done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class RemoteEngine:
    """An OpenAI-compatible server as the app's engine (`app.chat.engine_api.ChatEngine`).

    Args:
        base_url: the server, e.g. `http://127.0.0.1:8000` or `.../v1` (`/v1` is added when missing).
        api_key: sent as `Authorization: Bearer`; None sends none (the `openai` client gets a placeholder).
        model: the served model to use; None: the first of `GET /v1/models`.
        timeout_s: seconds to connect and between two reads of a stream, and for each stats read.
        stats_interval_s: seconds between two reads of the server's stats (a background thread).
    """

    def __init__(self, base_url: str, api_key: str | None = None, model: str | None = None,
                 timeout_s: float = 60.0, stats_interval_s: float = 1.0):
        url = base_url.rstrip("/")
        self.api_url = url if url.endswith("/v1") else url + "/v1"
        self.root_url = self.api_url[: -len("/v1")]
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.stats_interval_s = stats_interval_s
        self.max_model_len: int | None = None
        self.stats_source = "client"  # baton, vllm or client (see app.remote.stats)
        self._send_priority = True  # False once the server refused the field (see _open)
        self._wanted_model = model
        self._model: RemoteModel | None = None
        self._started = False
        self._live: dict[str, _Live] = {}
        self._finished_ids: deque[str] = deque(maxlen=4096)
        # per event loop: [loop, client, requests using it] (see _client)
        self._clients: dict[int, list] = {}
        self._rates = ClientRates()
        self._stats = EngineStats.empty()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ------------------------------------------------------------------------------- lifecycle
    @property
    def model(self) -> RemoteModel:
        """The served model. Raises RuntimeError before `start`."""
        if self._model is None:
            raise RuntimeError("remote engine not started: call start() first")
        return self._model

    @property
    def started(self) -> bool:
        return self._started

    @property
    def config(self) -> Any:
        """What the TUI's status line and panel read of an engine's configuration: `model` (the served model's
        name, or the URL before `start`) and `max_batch_size` (0: unknown)."""
        from types import SimpleNamespace

        return SimpleNamespace(model=self._model.name if self._model else self.api_url, max_batch_size=0)

    def start(self) -> RemoteEngine:
        """Reach the server (blocking): choose the model, find its stats source, start the stats thread.

        Raises:
            RemoteUnavailable: unreachable, key refused, no model, or `--model` not among the served ones.
        """
        if self._started:
            return self
        models = served_models(self.api_url, self.api_key, self.timeout_s)
        if not models:
            raise RemoteUnavailable(f"{self.api_url}/models lists no model")
        ids = [m["id"] for m in models]
        chosen = models[0] if self._wanted_model is None else next(
            (m for m in models if m["id"] == self._wanted_model), None)
        if chosen is None:
            raise RemoteUnavailable(f"--model: {self._wanted_model!r} is not served at {self.api_url} "
                                    f"(it serves {', '.join(ids)})")
        self._model = RemoteModel(chosen["id"], f"remote {self.root_url}")
        length = chosen.get("max_model_len")
        self.max_model_len = length if isinstance(length, int) and length > 0 else None
        self.stats_source = self._find_stats_source()
        self._stats = self._read_stats()
        self._stop.clear()
        self._started = True
        self._poller = threading.Thread(target=self._poll, name="baton-remote-stats", daemon=True)
        self._poller.start()
        return self

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop: requests in flight end with `cancelled` (their streams closed); the stats thread stops
        (waiting up to `timeout` seconds). Idempotent."""
        if not self._started:
            return
        self._started = False
        self._stop.set()
        for request_id in list(self._live):
            self.cancel(request_id)
        if self._poller is not None and self._poller is not threading.current_thread():
            self._poller.join(timeout)

    # ------------------------------------------------------------------------------ public API
    async def generate(self, prompt: Any, params: SamplingParams | None = None,
                       priority: Priority = Priority.INTERACTIVE,
                       request_id: str | None = None) -> AsyncIterator[TokenOutput]:
        """Stream one chat completion as `TokenOutput`s (see the module docstring).

        Args:
            prompt: chat messages `[{"role", "content"}]`.
            params: sampling parameters (default `SamplingParams()`).
            priority: scheduling class, sent as the body's `priority`.
            request_id: your id (unique among live requests) or None for a fresh one.
        Raises:
            ValueError: a prompt that is not chat messages, a duplicate id, or a request the server refused
                with a 4xx (its message, e.g. a prompt longer than the context).
            RuntimeError: the engine is not started.
        """
        if not self._started:
            raise RuntimeError("remote engine not started: call start() first")
        if not (isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt)):
            raise ValueError("prompt: a remote engine takes chat messages [{'role', 'content'}]")
        request_id = request_id or f"remote-{uuid.uuid4().hex[:12]}"
        if request_id in self._live:
            raise ValueError(f"request_id: {request_id!r} is already live")
        live = _Live(asyncio.get_running_loop(), asyncio.Queue())
        self._live[request_id] = live
        self._rates.request(RowStats(request_id, Priority(priority).name.lower(), "running", 0, 0))
        live.task = asyncio.create_task(self._read(request_id, live, prompt, params or SamplingParams(), priority))
        finished = False
        try:
            while not finished:
                item = await live.queue.get()
                if isinstance(item, Exception):
                    raise item
                finished = item.finished
                yield item
        finally:
            live.done = True
            if not live.task.cancelling():  # once: a second cancel would cut its clean-up (closing the pool)
                live.task.cancel()
            self._live.pop(request_id, None)
            self._rates.done(request_id)
            self._finished_ids.append(request_id)

    def cancel(self, request_id: str) -> bool:
        """Cancel a live request from any thread: its stream is closed and it ends with `cancelled`, keeping
        what it streamed.

        Returns:
            True if it was live, False if it had already finished.
        Raises:
            KeyError: an id this engine has never seen.
        """
        live = self._live.get(request_id)
        if live is not None and not live.done:
            try:
                live.loop.call_soon_threadsafe(self._cancel_in_loop, request_id, live)
            except RuntimeError:  # its event loop has closed: the stream went with it
                return False
            return True
        if live is not None or request_id in self._finished_ids:
            return False
        raise KeyError(f"unknown request id {request_id!r}")

    def stats(self) -> EngineStats:
        """The latest stats (see `app.remote.stats`); never waits on the network."""
        if self.stats_source == "client":
            return self._rates.snapshot(self._label(), self._model.name if self._model else "")
        return self._stats

    def memory(self) -> None:
        """None: the server's device memory is not readable from here."""
        return None

    # -------------------------------------------------------------------------------- internals
    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[openai.AsyncOpenAI]:
        """This event loop's `AsyncOpenAI`, shared by the requests in flight on it (one connection pool), and
        closed when the last of them ends: a pool belongs to one loop, and `baton chat` runs a loop per turn, so
        none is left open for a loop that has gone."""
        loop = asyncio.get_running_loop()
        entry = self._clients.get(id(loop))
        if entry is None or entry[0] is not loop:
            client = openai.AsyncOpenAI(base_url=self.api_url, api_key=self.api_key or "none",
                                        timeout=self.timeout_s, max_retries=0)
            self._clients[id(loop)] = entry = [loop, client, 0]
        entry[2] += 1
        try:
            yield entry[1]
        finally:
            entry[2] -= 1
            if entry[2] == 0 and self._clients.get(id(loop)) is entry:
                del self._clients[id(loop)]
                await entry[1].close()

    async def _open(self, client: openai.AsyncOpenAI, messages: list, fields: dict, extra: dict) -> Any:
        """Open the stream. A server that refuses the `priority` field (vLLM without `--scheduling-policy
        priority` refuses any but 0 with a 400 naming it) gets the request again without it, and no priority
        from then on.

        Raises:
            openai.APIError (and subclasses): as `chat.completions.create`.
        """
        if not self._send_priority:
            extra = {k: v for k, v in extra.items() if k != "priority"}
        try:
            return await client.chat.completions.create(
                model=self.model.name, messages=messages, stream=True, stream_options={"include_usage": True},
                extra_body=extra, **fields)
        except openai.BadRequestError as exc:
            if "priority" not in extra or "priority" not in _status_text(exc).lower():
                raise
            self._send_priority = False
            return await self._open(client, messages, fields, extra)

    async def _read(self, request_id: str, live: _Live, messages: list, params: SamplingParams,
                    priority: Priority) -> None:
        """Stream the request into `live.queue` (the task `cancel` cancels)."""
        put = live.queue.put_nowait
        fields, extra = request_fields(params, priority, baton=self.stats_source == "baton")
        started = False
        try:
            async with self._client() as client:
                stream = await self._open(client, messages, fields, extra)
                started = True
                finish = await self._stream(request_id, live, stream)
            if finish is None:
                put(self._closing(request_id, live, "error",
                                  f"the remote engine at {self.api_url} ended the stream without a finish reason "
                                  "(the server stopped or the connection was cut)"))
            else:
                put(self._closing(request_id, live, FINISH_REASONS.get(finish, "stop")))
        except asyncio.CancelledError:
            raise
        except openai.APIStatusError as exc:
            if not started and 400 <= exc.status_code < 500 and exc.status_code not in (401, 403, 408, 429):
                put(ValueError(_status_text(exc)))
            else:
                put(self._closing(request_id, live, "error", fault_message(exc, self.api_url)))
        except Exception as exc:  # connection refused, timeout, a cut stream, a malformed event: one message
            put(self._closing(request_id, live, "error", fault_message(exc, self.api_url)))

    async def _stream(self, request_id: str, live: _Live, stream: Any) -> str | None:
        """Put a `TokenOutput` for each text delta of `stream` (closed at the end); returns its finish reason
        (None: the stream ended without one). Raises what reading the stream raises."""
        finish = None
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    live.prompt_tokens = chunk.usage.prompt_tokens or live.prompt_tokens
                    live.completion_tokens = chunk.usage.completion_tokens or live.completion_tokens
                    details = getattr(chunk.usage, "prompt_tokens_details", None)
                    live.cached_tokens = getattr(details, "cached_tokens", None) or live.cached_tokens
                for choice in chunk.choices:
                    if choice.delta is not None and choice.delta.content:
                        live.completion_tokens += 1
                        self._rates.token()
                        live.queue.put_nowait(TokenOutput(request_id, REMOTE_TOKEN_ID, choice.delta.content, None,
                                                          live.prompt_tokens, live.completion_tokens,
                                                          cached_tokens=live.cached_tokens))
                    if choice.finish_reason:
                        finish = choice.finish_reason
        return finish

    @staticmethod
    def _closing(request_id: str, live: _Live, reason: str, error: str | None = None) -> TokenOutput:
        return TokenOutput(request_id, None, "", reason, live.prompt_tokens, live.completion_tokens, error,
                           cached_tokens=live.cached_tokens)

    def _cancel_in_loop(self, request_id: str, live: _Live) -> None:
        if live.done or live.task is None or live.task.done():
            return
        live.task.cancel()  # closes the HTTP stream (async with)
        live.queue.put_nowait(self._closing(request_id, live, "cancelled"))

    def _label(self) -> str:
        return f"remote {self.root_url} · {LABELS[self.stats_source]}"

    def _find_stats_source(self) -> str:
        """`baton` when `/v1/baton/stats` answers, `vllm` when `/metrics` has `vllm:` gauges, else `client`."""
        try:
            status, _ = get(f"{self.api_url}/baton/stats", self.api_key, self.timeout_s)
            if status == 200:
                return "baton"
            status, body = get(f"{self.root_url}/metrics", self.api_key, self.timeout_s)
            if status == 200 and vllm_gauges(body.decode("utf-8", "replace")):
                return "vllm"
        except (RemoteUnavailable, ValueError):
            pass
        return "client"

    def _read_stats(self) -> EngineStats:
        """One read of the stats source (blocking). Raises RemoteUnavailable, ValueError, TypeError, KeyError."""
        name = self._model.name if self._model else ""
        if self.stats_source == "baton":
            return from_baton(get_json(f"{self.api_url}/baton/stats", self.api_key, self.timeout_s), self._label())
        if self.stats_source == "vllm":
            status, body = get(f"{self.root_url}/metrics", self.api_key, self.timeout_s)
            if status != 200:
                raise RemoteUnavailable(f"{self.root_url}/metrics answered HTTP {status}")
            return self._rates.snapshot(self._label(), name, vllm_gauges(body.decode("utf-8", "replace")))
        return self._rates.snapshot(self._label(), name)

    def _poll(self) -> None:
        """The stats thread: read the source every `stats_interval_s` until shutdown; a failed read keeps the
        last snapshot (the panel shows it; the chat reports its own faults)."""
        while not self._stop.wait(self.stats_interval_s):
            try:
                self._stats = self._read_stats()
            except (RemoteUnavailable, ValueError, TypeError, KeyError):
                pass


def _status_text(exc: openai.APIStatusError) -> str:
    """A 4xx's message as the server put it (OpenAI's `error.message`), with its status."""
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else body
    message = error.get("message") if isinstance(error, dict) else None
    return f"{message or exc.message} (HTTP {exc.status_code})"
