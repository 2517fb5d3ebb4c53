"""The engine's front end: the public API, request intake and the engine thread.

`Engine` validates and tokenizes requests on the caller's thread, hands them to the engine thread through a
thread-safe inbox of typed commands (`AddRequests`, `Cancel`, `Stop`), and streams results back through each
request's `emit` callback (`generate` wires it to an asyncio queue, `generate_batch` to a `queue.Queue`). The
engine thread drains the inbox and steps the `EngineCore` (`backend/core.py`), which owns the model, the
running batch and every tensor and runs the BATON loop (arXiv 2410.18701 §4). Bad input raises for that
request only.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Sequence

import torch

from .config import EngineConfig, Priority, SamplingParams
from .core import EngineCore
from .detokenizer import IncrementalDetokenizer
from .intake import ContextLengthError, max_token_chars, text_problem
from .memory import DeviceMemory, read_device_memory
from .models import LoadedModel, load_model
from .request import Request, TokenOutput
from .stats import EngineStats

Prompt = str | Sequence[int] | Sequence[dict]


# ------------------------------------------------------------------- the engine thread's inbox commands
@dataclass(frozen=True)
class AddRequests:
    """Queue new requests; those of one command reach the scheduler in the same iteration."""

    requests: tuple[Request, ...]


@dataclass(frozen=True)
class Cancel:
    """Cancel a queued or running request (it ends `cancelled`); a finished one is left alone."""

    request_id: str


@dataclass(frozen=True)
class Stop:
    """Stop the engine thread: every unfinished request ends `cancelled` ("engine shut down")."""


Command = AddRequests | Cancel | Stop


@dataclass(frozen=True)
class CompletionResult:
    """The whole result of one request (`Engine.generate_batch`).

    Attributes:
        request_id, text, token_ids: what was generated.
        finish_reason: `stop`, `length`, `cancelled` or `error`.
        prompt_tokens, completion_tokens: token counts.
        error: message when `finish_reason == "error"` (including requests rejected at submission).
        ttft_ms: time to first token (ms), None when none came.
        e2e_ms: submission to last item (ms).
        cached_tokens: prompt tokens served from the prefix cache (tokens).
    """

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None
    ttft_ms: float | None
    e2e_ms: float
    cached_tokens: int = 0


class Engine:
    """In-process BATON re-batching engine serving many requests on one model.

    Usage:
        engine = Engine(EngineConfig(model="random:tiny")).start()
        async for out in engine.generate("Hello", SamplingParams(max_tokens=16)): print(out.text, end="")
        engine.shutdown()

    Raises (from the methods named):
        ModelLoadError (`start`): the model cannot be loaded.
        RuntimeError: `generate`/`generate_batch` before `start` or after `shutdown`.
        ValueError: invalid prompt, sampling params, priority or duplicate request id (`generate` raises on
            first iteration; `generate_batch` reports it in that request's result).
        KeyError (`cancel`): a request id the engine has never seen.
    """

    RUNS_CORE_HERE = True
    """False for `EngineProcess`, whose core runs in a child process."""

    def __init__(self, config: EngineConfig | None = None, loaded: LoadedModel | None = None):
        self.config = config or EngineConfig()
        if self.config.process and self.RUNS_CORE_HERE:
            raise ValueError("process: an Engine runs its core in this process; use EngineProcess (or "
                             "make_engine) for config.process=True")
        self._loaded = loaded
        self._inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards the tokenizer, _live and _finished_ids across threads
        self._live: dict[str, Request] = {}
        self._finished_ids: deque[str] = deque(maxlen=4096)
        self._core: EngineCore | None = None
        self._stopped = False
        self.max_model_len: int | None = None  # tokens of one request's context, set by start()

    # ------------------------------------------------------------------------------- lifecycle
    @property
    def model(self) -> LoadedModel:
        if self._loaded is None:
            raise RuntimeError("engine not started: call start() first")
        return self._loaded

    @property
    def started(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "Engine":
        """Load the model (if not given) and start the engine thread. Returns self.

        Raises:
            ModelLoadError: the model spec cannot be loaded.
        """
        if self.started:
            return self
        cfg = self.config
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        if self._loaded is None:
            self._loaded = load_model(cfg.model, cfg.device, cfg.dtype, cfg.seed, cfg.attn_implementation)
        lm = self._loaded
        self.max_model_len = min(cfg.max_model_len or lm.max_model_len, lm.max_model_len)
        self._core = EngineCore(cfg, lm, self._forget)
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="baton-engine", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the engine thread; unfinished requests end with `cancelled`. Idempotent.

        Args:
            timeout: most seconds to wait for the thread to end. It ends after the step in flight (a decode
                step, or a prefill: seconds on a CPU); 0 returns at once and lets it end alone (a daemon
                thread), for a process that is about to exit.
        """
        if self._thread is None:
            return
        self._inbox.put(Stop())
        self._thread.join(timeout)
        self._thread = None
        self._stopped = True

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ------------------------------------------------------------------------------ public API
    async def generate(self, prompt: Prompt, params: SamplingParams | None = None,
                       priority: Priority = Priority.INTERACTIVE,
                       request_id: str | None = None) -> AsyncIterator[TokenOutput]:
        """Stream one request's outputs, one `TokenOutput` per generated token; the last has `finish_reason`.

        Args:
            prompt: a string (tokenized as is), a list of token ids, or chat messages
                `[{"role", "content"}]` rendered with the tokenizer's chat template.
            params: sampling parameters (default `SamplingParams()`).
            priority: scheduling class.
            request_id: your id (unique among live requests) or None for a fresh one.
        Raises:
            ValueError: invalid prompt (empty; longer than the context: `ContextLengthError`), params, priority
                or duplicate id.
            RuntimeError: the engine is not running.
        Leaving the iteration early (break, task cancellation) cancels the request in the engine.

        The prompt is tokenized (its chat template rendered) in a worker thread, not on the event loop: 8 ms for
        a short ShareGPT chat on the 2-core CPU, so a job submitting 32 lines at once stalled every other stream
        on the loop (a TUI's chats) for a quarter of a second.
        """
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[TokenOutput] = asyncio.Queue()
        made = loop.run_in_executor(None, functools.partial(
            self._make_request, prompt, params, priority, request_id,
            lambda out: loop.call_soon_threadsafe(items.put_nowait, out)))
        try:
            req = await asyncio.shield(made)
        except asyncio.CancelledError:  # the caller left while the prompt was tokenized: never submitted
            made.add_done_callback(self._unregister)
            raise
        self._submit((req,))
        finished = False
        try:
            while not finished:
                out = await items.get()
                finished = out.finished
                yield out
        finally:
            if not finished:
                self._send_cancel(req.request_id)

    def generate_batch(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams] | None = None,
                       priority: Priority = Priority.BATCH,
                       on_output: Callable[[TokenOutput], None] | None = None) -> list[CompletionResult]:
        """Run many prompts to completion (blocking; for scripts). Results come back in prompt order.

        Args:
            prompts: as for `generate`.
            params: one `SamplingParams` for all, or one per prompt.
            priority: scheduling class of every request.
            on_output: called (from this thread) with every `TokenOutput` as it arrives, e.g. for progress.
        Returns:
            One `CompletionResult` per prompt; a prompt rejected at submission has `finish_reason="error"`.
        """
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"params: got {len(params)} SamplingParams for {len(prompts)} prompts")
        outputs: queue.SimpleQueue[TokenOutput] = queue.SimpleQueue()
        start = time.perf_counter()
        results: list[CompletionResult | None] = [None] * len(prompts)
        pending: dict[str, int] = {}
        reqs: list[Request] = []
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            try:
                req = self._make_request(prompt, p, priority, None, outputs.put)
            except ValueError as exc:
                results[i] = CompletionResult(f"rejected-{i}", "", [], "error", 0, 0, str(exc), None, 0.0)
                continue
            pending[req.request_id] = i
            reqs.append(req)
        self._submit(tuple(reqs))  # one command: the engine sees them all in the same iteration
        acc: dict[str, tuple[list[str], list[int], list[float | None]]] = {
            rid: ([], [], [None]) for rid in pending}
        while pending:
            out = outputs.get()
            if on_output is not None:
                on_output(out)
            texts, ids, ttft = acc[out.request_id]
            texts.append(out.text)
            if out.token_id is not None:
                ids.append(out.token_id)
                if ttft[0] is None:
                    ttft[0] = (time.perf_counter() - start) * 1000
            if out.finished:
                i = pending.pop(out.request_id)
                results[i] = CompletionResult(out.request_id, "".join(texts), ids, out.finish_reason,
                                              out.prompt_tokens, out.completion_tokens, out.error, ttft[0],
                                              (time.perf_counter() - start) * 1000, out.cached_tokens)
        return results  # type: ignore[return-value]

    def cancel(self, request_id: str) -> bool:
        """Cancel a request: it ends with `finish_reason="cancelled"` and keeps what it generated.

        Returns:
            True if the request was live, False if it had already finished.
        Raises:
            KeyError: the engine has never seen this id.
        """
        with self._lock:
            live, finished = request_id in self._live, request_id in self._finished_ids
        if live:
            self._send_cancel(request_id)
            return True
        if finished:
            return False
        raise KeyError(f"unknown request id {request_id!r}")

    def memory(self) -> DeviceMemory | None:
        """A reading of the engine's device memory now (bytes; on a CPU, this process's RSS):
        `read_device_memory` of the model's device.

        Raises:
            RuntimeError: not started (no model yet), or a CUDA device whose memory cannot be read.
        """
        return read_device_memory(self.model.device)

    def stats(self) -> EngineStats:
        """The latest snapshot of the engine (published by the engine thread after every step)."""
        return self._core.stats if self._core is not None else EngineStats.empty()

    # -------------------------------------------------------------------------- request intake
    def tokenize(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt (chat messages go through the chat template).

        Raises:
            ValueError: `prompt: ...` when the prompt is empty, holds text that is not valid UTF-8 (a lone
                surrogate, which the tokenizer cannot take), is malformed, or is longer in characters than
                `max_model_len` tokens can ever be (refused before tokenizing it: `backend.intake`).
        """
        tok = self.model.tokenizer
        if isinstance(prompt, str):
            if prompt.isspace() or not prompt:  # no stripped copy of a long prompt
                raise ValueError("prompt: must not be empty")
            if (problem := text_problem(prompt)) is not None:
                raise ValueError(f"prompt: {problem}")
            self._check_fits(prompt, "the prompt")
            with self._lock:
                return tok(prompt).input_ids
        prompt = list(prompt)
        if not prompt:
            raise ValueError("prompt: must not be empty")
        if all(isinstance(t, dict) for t in prompt):
            for i, m in enumerate(prompt):
                if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                    raise ValueError("prompt: every chat message needs string 'role' and 'content' fields")
                for key in ("role", "content"):
                    if (problem := text_problem(m[key])) is not None:
                        raise ValueError(f"prompt: message {i} {key}: {problem}")
            with self._lock:
                text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            self._check_fits(text, "the prompt with its chat template")  # what is tokenized: the rendered text
            with self._lock:
                return tok(text, add_special_tokens=False).input_ids
        vocab = self.model.vocab_size
        if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in prompt):
            raise ValueError(f"prompt: token ids must be integers in [0, {vocab})")
        return prompt

    def _check_fits(self, text: str, what: str) -> None:
        """Refuse text that cannot fit in the context, without tokenizing it (its UTF-8 is checked before).

        Raises:
            ContextLengthError: `prompt: <what> is N characters, ...` when N (characters) is more than
                `max_model_len` (tokens) times the most characters one token stands for.
        """
        per_token = max_token_chars(self.model.tokenizer)
        max_len = self.max_model_len or self.model.max_model_len  # before start(): the model's own
        if per_token is not None and len(text) > max_len * per_token:
            raise ContextLengthError(f"prompt: {what} is {len(text)} characters, which cannot fit in the context "
                                     f"of {max_len} tokens (max_model_len): one token of this model stands for at "
                                     f"most {per_token} characters")

    def _make_request(self, prompt: Prompt, params: SamplingParams | None, priority: Priority,
                      request_id: str | None, emit: Callable[[TokenOutput], None]) -> Request:
        """Validate and tokenize a request and make it live (`_admit`, then `_build_request`).

        Raises:
            RuntimeError: the engine is not running.
            ValueError: as `generate` describes.
        """
        rid, ids, params, priority = self._admit(prompt, params, priority, request_id)
        return self._register(self._build_request(rid, ids, params, priority, emit))

    def _register(self, req: Request) -> Request:
        """Make a request live (cancellable by id until it finishes). Returns it.

        Raises:
            ValueError: `request_id: ...` when a live request has its id.
        """
        with self._lock:
            if req.request_id in self._live:
                raise ValueError(f"request_id: {req.request_id!r} is already running")
            self._live[req.request_id] = req
        return req

    def _admit(self, prompt: Prompt, params: SamplingParams | None, priority: Priority,
               request_id: str | None) -> tuple[str, list[int], SamplingParams, Priority]:
        """Check a request and tokenize its prompt. Returns `(request id, prompt token ids, params, priority)`.

        Raises:
            RuntimeError: the engine is not running.
            ValueError: invalid params or priority; a prompt that is invalid, longer than the context
                (`ContextLengthError`) or whose K/V could never fit in a fixed KV budget.
        """
        if not self.started:
            raise RuntimeError("engine is not running: call start() first")
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params: expected SamplingParams, got {type(params).__name__}")
        try:
            priority = Priority(priority)
        except ValueError:
            raise ValueError(f"priority: must be one of {[p.name for p in Priority]}, got {priority!r}") from None
        ids = self.tokenize(prompt)
        if len(ids) >= self.max_model_len:
            raise ContextLengthError(f"prompt: {len(ids)} tokens leave no room in the context of "
                                     f"{self.max_model_len} tokens (max_model_len)")
        budget, bytes_per_token = self._kv_facts()
        need = (len(ids) + params.max_tokens + 1) * bytes_per_token
        if budget is not None and need > budget:
            raise ValueError(f"prompt: {len(ids)} prompt tokens + max_tokens {params.max_tokens} need "
                             f"{need} bytes of KV cache, more than the KV budget of {budget} bytes "
                             "(kv_budget_bytes); it could never run")
        return request_id or uuid.uuid4().hex, ids, params, priority

    def _kv_facts(self) -> tuple[int | None, int]:
        """`(fixed KV budget in bytes or None, K/V bytes per token)` of the running core."""
        return self._core.fixed_kv_budget(), self._core.bytes_per_token

    def _build_request(self, rid: str, ids: list[int], params: SamplingParams, priority: Priority,
                       emit: Callable[[TokenOutput], None]) -> Request:
        """The core's `Request` for an admitted prompt: its detokenizer and (seeded) generator."""
        gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        return Request(rid, ids, params, priority, emit, IncrementalDetokenizer(self.model.tokenizer, params.stop),
                       self.max_model_len, generator=gen)

    # ------------------------------------------------------------------------------ the loop
    def _run(self) -> None:
        core = self._core
        with torch.inference_mode():  # every tensor the engine makes is an inference tensor
            while self._drain_inbox(block=core.idle):
                try:
                    core.step()
                except Exception as exc:  # an engine bug must not kill the thread: fail the batch, go on
                    core.recover(exc)
            late = []  # requests that raced with the stop command
            while True:
                try:
                    cmd = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if isinstance(cmd, AddRequests):
                    late.extend(cmd.requests)
            core.shut_down(late)
        core.close()

    def _submit(self, reqs: tuple[Request, ...]) -> None:
        """Hand requests to the engine thread; an interactive one also stops the background forward in flight
        at its next decoder layer (`backend.step_abort`), so its prefill starts within one layer's time."""
        self._inbox.put(AddRequests(reqs))
        core = self._core
        if core is not None and any(r.priority == Priority.INTERACTIVE for r in reqs):
            core.runner.abort.interactive_arrived()

    def _send_cancel(self, request_id: str) -> None:
        """Ask the engine thread to cancel a request (a finished one is left alone)."""
        self._inbox.put(Cancel(request_id))

    def _drain_inbox(self, block: bool) -> bool:
        """Apply queued commands to the core. Returns False on stop.

        A request cancelled here gets its final output at once, not at the end of the next iteration (a whole
        decode step of the other rows, or a prefill, later: seconds on a CPU)."""
        self._core.runner.abort.clear()  # the interactive arrivals signalled so far are about to be seen
        try:
            cmd = self._inbox.get() if block else self._inbox.get_nowait()
        except queue.Empty:
            return True
        while True:
            match cmd:
                case Stop():
                    return False
                case AddRequests(reqs):
                    self._core.add(reqs)
                case Cancel(request_id):
                    self._core.cancel(request_id)
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                self._core.send_finished()
                return True

    def _unregister(self, made: "asyncio.Future[Request]") -> None:
        """A request made for a caller that left before it was submitted is not live."""
        if not made.cancelled() and made.exception() is None:
            with self._lock:
                self._live.pop(made.result().request_id, None)

    def _forget(self, request_id: str) -> None:
        """The core finished a request: it is no longer live (called from the engine thread)."""
        with self._lock:
            self._live.pop(request_id, None)
            self._finished_ids.append(request_id)
