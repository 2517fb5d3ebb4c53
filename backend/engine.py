"""The engine: one thread owns the model, the running batch and every tensor.

Loop (BATON, arXiv 2410.18701 §4): drain the inbox (new requests, cancels) -> admit waiting requests by
priority -> prefill the newcomers apart from the decoding rows (one packed forward for those admitted together;
a prompt longer than the iteration's token budget in chunks over several iterations) and embed each one's K/V
into the batch -> one decode step for all rows ->
sample -> emit tokens -> retire finished rows at once (and trim all-padding columns).

Callers on any thread talk to it through a thread-safe inbox; results come back through each request's
`emit` callback (`generate` wires it to an asyncio queue, `generate_batch` to a `queue.Queue`). An error in
one request (bad input, a failed prefill, a broken consumer) fails that request only.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Sequence

import psutil
import torch

from .config import EngineConfig, Priority, SamplingParams
from .detokenizer import IncrementalDetokenizer
from .memory import read_device_memory
from .models import LoadedModel, load_model
from .request import Request, RequestStatus, TokenOutput
from .runner import ModelRunner
from .sampler import SamplingTensors, draw_uniforms, sample
from .scheduler import MemoryView, Scheduler
from .stats import EngineStats, RowStats, StatsWindow

_MIN_CHUNK_TOKENS = 128  # a prefill chunk that only fills the rest of an iteration's budget is at least this long

Prompt = str | Sequence[int] | Sequence[dict]


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

    def __init__(self, config: EngineConfig | None = None, loaded: LoadedModel | None = None):
        self.config = config or EngineConfig()
        self._loaded = loaded
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards the tokenizer, _live and _finished_ids across threads
        self._live: dict[str, Request] = {}
        self._finished_ids: deque[str] = deque(maxlen=4096)
        self._stats = EngineStats.empty()
        self._stopped = False

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
        if self._loaded is None:
            self._loaded = load_model(cfg.model, cfg.device, cfg.dtype, cfg.seed, cfg.attn_implementation)
        lm = self._loaded
        self.max_model_len = min(cfg.max_model_len or lm.max_model_len, lm.max_model_len)
        self._runner = ModelRunner(lm.model, lm.device)
        self._batch = self._runner.new_batch(cfg.max_batch_size)
        self._rows: list[Request] = []  # row i of the batch <-> self._rows[i]
        self._row_params: SamplingTensors | None = None
        self._scheduler = Scheduler(cfg.max_preemptions)
        self._start_counter = itertools.count()
        ram = psutil.virtual_memory().total
        self._cpu_kv_budget = min(8 * 2**30, int(0.4 * ram))
        self._budget: int | None = None  # this iteration's KV budget (bytes), set by _iteration
        self._window = StatsWindow()
        self._generator = torch.Generator().manual_seed(cfg.seed)
        self._stopped = False
        self._final_outputs: list[tuple[Request, TokenOutput]] = []
        self._thread = threading.Thread(target=self._run, name="baton-engine", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the engine thread; unfinished requests end with `cancelled`. Idempotent."""
        if self._thread is None:
            return
        self._inbox.put(("stop", None))
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
            ValueError: invalid prompt (empty, longer than the context), params, priority or duplicate id.
            RuntimeError: the engine is not running.
        Leaving the iteration early (break, task cancellation) cancels the request in the engine.
        """
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[TokenOutput] = asyncio.Queue()
        req = self._make_request(prompt, params, priority, request_id,
                                 lambda out: loop.call_soon_threadsafe(items.put_nowait, out))
        self._inbox.put(("add", req))
        finished = False
        try:
            while not finished:
                out = await items.get()
                finished = out.finished
                yield out
        finally:
            if not finished:
                self._inbox.put(("cancel", req.request_id))

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
        self._inbox.put(("add_many", reqs))  # one command: the engine sees them all in the same iteration
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
                                              (time.perf_counter() - start) * 1000)
        return results  # type: ignore[return-value]

    def cancel(self, request_id: str) -> bool:
        """Cancel a request: it ends with `finish_reason="cancelled"` and keeps what it generated.

        Returns:
            True if the request was live, False if it had already finished.
        Raises:
            KeyError: the engine has never seen this id.
        """
        with self._lock:
            if request_id in self._live:
                self._inbox.put(("cancel", request_id))
                return True
            if request_id in self._finished_ids:
                return False
        raise KeyError(f"unknown request id {request_id!r}")

    def stats(self) -> EngineStats:
        """The latest snapshot of the engine (published by the engine thread after every step)."""
        return self._stats

    # -------------------------------------------------------------------------- request intake
    def tokenize(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt (chat messages go through the chat template). Raises ValueError."""
        tok = self.model.tokenizer
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError("prompt: must not be empty")
            with self._lock:
                return tok(prompt).input_ids
        prompt = list(prompt)
        if not prompt:
            raise ValueError("prompt: must not be empty")
        if all(isinstance(t, dict) for t in prompt):
            for m in prompt:
                if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                    raise ValueError("prompt: every chat message needs string 'role' and 'content' fields")
            with self._lock:
                text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
                return tok(text, add_special_tokens=False).input_ids
        vocab = self.model.model.config.vocab_size
        if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in prompt):
            raise ValueError(f"prompt: token ids must be integers in [0, {vocab})")
        return prompt

    def _make_request(self, prompt: Prompt, params: SamplingParams | None, priority: Priority,
                      request_id: str | None, emit: Callable[[TokenOutput], None]) -> Request:
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
            raise ValueError(f"prompt: {len(ids)} tokens leave no room in the context of "
                             f"{self.max_model_len} tokens (max_model_len)")
        budget = self._fixed_kv_budget()
        need = (len(ids) + params.max_tokens + 1) * self._batch.bytes_per_token
        if budget is not None and need > budget:
            raise ValueError(f"prompt: {len(ids)} prompt tokens + max_tokens {params.max_tokens} need "
                             f"{need} bytes of KV cache, more than the KV budget of {budget} bytes "
                             "(kv_budget_bytes); it could never run")
        rid = request_id or uuid.uuid4().hex
        gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        req = Request(rid, ids, params, priority, emit, IncrementalDetokenizer(self.model.tokenizer, params.stop),
                      self.max_model_len, generator=gen)
        with self._lock:
            if rid in self._live:
                raise ValueError(f"request_id: {rid!r} is already running")
            self._live[rid] = req
        return req

    # ------------------------------------------------------------------------------ the loop
    def _run(self) -> None:
        with torch.inference_mode():  # every tensor the engine makes is an inference tensor
            while True:
                try:
                    if not self._iteration():
                        break
                except Exception as exc:  # an engine bug must not kill the thread: fail the batch, go on
                    self._fail_rows(f"engine fault: {exc!r}")
                    self._send_final_outputs()
            late = []  # requests that raced with the stop command
            while True:
                try:
                    cmd, arg = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if cmd in ("add", "add_many"):
                    late.extend([arg] if cmd == "add" else arg)
            for req in [*self._rows, *self._scheduler.waiting(), *late]:
                self._finish(req, RequestStatus.FINISHED_ABORTED, error="engine shut down")
            self._rows.clear()
            self._publish_stats()
            self._send_final_outputs()
        self._runner.close()

    def _iteration(self) -> bool:
        """One engine iteration. Returns False when asked to stop."""
        idle = not self._rows and not len(self._scheduler)
        if not self._drain_inbox(block=idle):
            return False
        self._budget = self._kv_budget()  # one device-memory reading per iteration
        self._admit()
        self._relieve_memory_pressure()
        if self._rows:
            self._decode_step()
        self._publish_stats()
        self._send_final_outputs()
        return True

    def _fail_rows(self, error: str) -> None:
        """Fail every running row and start from an empty batch (queued requests are kept)."""
        for req in self._rows:
            self._finish(req, RequestStatus.FINISHED_ERROR, error=error)
        self._rows = []
        self._row_params = None
        self._batch = self._runner.new_batch(self.config.max_batch_size)

    def _drain_inbox(self, block: bool) -> bool:
        """Apply queued commands. Returns False on stop."""
        try:
            cmd, arg = self._inbox.get() if block else self._inbox.get_nowait()
        except queue.Empty:
            return True
        while True:
            if cmd == "stop":
                return False
            if cmd in ("add", "add_many"):
                for req in [arg] if cmd == "add" else arg:
                    req.arrival_step = self._step_count()
                    self._scheduler.add(req)
                    self._window.count("num_requests_received")
            elif cmd == "cancel":
                self._cancel(arg)
            try:
                cmd, arg = self._inbox.get_nowait()
            except queue.Empty:
                return True

    def _cancel(self, request_id: str) -> None:
        req = self._scheduler.remove(request_id)
        if req is None:
            row = next((i for i, r in enumerate(self._rows) if r.request_id == request_id), None)
            if row is None:
                return  # already finished
            req = self._rows[row]
            self._remove_row(row)
        self._finish(req, RequestStatus.FINISHED_ABORTED)

    def _admit(self) -> None:
        """Admit queued work by priority: swap-ins and prefills while rows and memory allow, preempting
        lower-priority rows for higher-priority work (BATON §4.3).

        Consecutive newcomers of one priority class are prefilled together in one packed forward
        (`ModelRunner.prefill_packed`); a higher class never waits for a lower one's prompts.
        """
        group: list[Request] = []  # newcomers admitted but not yet prefilled
        try:
            self._admit_into(group)
        except Exception as exc:  # an engine fault: the admitted requests fail rather than get lost
            for req in group:
                if not req.status.is_finished and all(r is not req for r in self._rows):
                    self._finish(req, RequestStatus.FINISHED_ERROR, error=f"engine fault: {exc!r}")
            raise

    def _prefill_budget(self, req: Request, group: list[Request]) -> int:
        """Prompt tokens this iteration may prefill up to and including `req` (see `EngineConfig`)."""
        budget, background = self.config.max_prefill_tokens, self.config.max_background_prefill_tokens
        if background is None or req.priority == Priority.INTERACTIVE:
            return budget
        chatting = any(r.priority == Priority.INTERACTIVE for r in itertools.chain(self._rows, group))
        return min(budget, background) if chatting else budget

    def _admit_into(self, group: list[Request]) -> None:
        spent = 0
        while (req := self._scheduler.peek()) is not None:
            if req.swapped is not None:
                length, take = req.swapped.length, 0
            else:  # prompt tokens to prefill now: all that is left, or a chunk of what the budget has left
                length = req.num_prompt_tokens
                budget = self._prefill_budget(req, group)
                remaining, left = length - req.num_prefilled, budget - spent
                min_chunk = min(_MIN_CHUNK_TOKENS, budget)
                take = remaining if remaining <= left else (left if left >= min_chunk or not spent else 0)
                if not take:
                    break  # the rest waits for the next iteration: running rows are not held up further
            if group and req.priority != group[0].priority:
                self._prefill_group(group)
            if (len(self._rows) + len(group) < self.config.max_batch_size
                    and self._memory_view(group, admitting=req).fits_after_insert(length)):
                self._scheduler.pop()
                spent += take
                if req.swapped is not None:
                    self._swap_in(req)
                elif take == length:  # a whole prompt: prefilled with the group, in one packed forward
                    group.append(req)
                else:  # a chunk of a long prompt, alone (it attends to its own earlier chunks)
                    self._prefill_group(group)
                    self._prefill_chunk(req, take)
                continue
            if group:  # room may have been the group's: prefill it, then see again
                self._prefill_group(group)
                continue
            victim = self._scheduler.choose_victim(self._rows, int(req.priority))
            if victim is None:
                break
            self._swap_out(victim)
        self._prefill_group(group)

    def _relieve_memory_pressure(self) -> None:
        """While the next step would pass the high watermark, free memory from the lowest-priority work:
        swap out a row (lowest priority, most recent first), or, where a long prompt between prefill chunks
        has no higher priority than that row, drop its partial K/V (its prefill restarts later; nothing was
        emitted, so nothing is lost or repeated)."""
        while self._memory_view().over_high_watermark():
            victim = self._scheduler.choose_victim(self._rows, None)
            holder = self._scheduler.choose_prefill_to_drop()
            if holder is not None and (victim is None or holder.priority >= self._rows[victim].priority):
                self._drop_partial_prefill(holder)
            elif victim is not None:
                self._swap_out(victim)
            else:
                return

    def _drop_partial_prefill(self, req: Request) -> None:
        """Free the K/V a queued long prompt holds between prefill chunks; it starts its prefill again."""
        req.prefill_cache, req.num_prefilled = None, 0
        req.status = RequestStatus.WAITING
        self._window.count("num_prefill_restarts")

    def _swap_out(self, row: int) -> None:
        """Preempt one row: copy its K/V to host memory (pinned on CUDA), free the row, requeue it."""
        req = self._rows[row]
        req.swapped = self._batch.extract(row, device="cpu", pin_memory=self._runner.device.type == "cuda")
        self._remove_row(row)
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self._scheduler.requeue(req)
        self._window.count("num_preemptions")
        self._window.count("num_swap_outs")
        self._window.count("num_swapped_out_bytes", req.swapped.nbytes)

    def _swap_in(self, req: Request) -> None:
        """Bring a preempted row back: its K/V bytes return unchanged, decoding resumes where it stopped."""
        self._batch.insert(req.swapped)
        self._window.count("num_swap_ins")
        req.swapped = None
        req.status = RequestStatus.RUNNING
        self._rows.append(req)
        self._row_params = None

    def _memory_view(self, pending: Sequence[Request] = (), admitting: Request | None = None) -> MemoryView:
        """The batch's memory as the scheduler sees it, with `pending` newcomers counted as rows already.

        Under a fixed budget the K/V that long prompts hold between prefill chunks count too (except
        `admitting`'s own, which its new row replaces); a budget read from free device memory already
        excludes them.
        """
        b = self._batch
        seq_len = max([b.seq_len, *(r.num_prompt_tokens for r in pending)])
        held = 0
        if self._fixed_kv_budget() is not None:
            held = self._prefill_cache_bytes() - (admitting.num_prefilled * b.bytes_per_token if admitting else 0)
        return MemoryView(len(self._rows) + len(pending), seq_len, b.bytes_per_token, self._budget,
                          self.config.memory_low_watermark, self.config.memory_high_watermark, held)

    def _prefill_cache_bytes(self) -> int:
        """K/V bytes held by long prompts between prefill chunks (outside the batch's buffers)."""
        return self._scheduler.prefilled_tokens() * self._batch.bytes_per_token

    def _fixed_kv_budget(self) -> int | None:
        """The configured budget, or the CPU default; None on CUDA, where the budget follows free memory."""
        if self.config.kv_budget_bytes is not None:
            return self.config.kv_budget_bytes
        return self._cpu_kv_budget if self._runner.device.type != "cuda" else None

    def _kv_budget(self) -> int | None:
        """Bytes the padded KV window may take now (see `EngineConfig.kv_budget_bytes`)."""
        fixed = self._fixed_kv_budget()
        if fixed is not None:
            return fixed
        mem = read_device_memory(self._runner.device)
        used = mem.used_bytes - mem.torch_reserved_bytes + mem.torch_allocated_bytes  # other processes + live tensors
        window = len(self._rows) * (self._batch.seq_len + 1) * self._batch.bytes_per_token
        return max(self._batch.bytes_per_token, window + mem.total_bytes - used)

    def _prefill_group(self, group: list[Request]) -> None:
        """Prefill newcomers (together, in one packed forward), emit their first tokens, and embed their
        K/V as new batch rows; `group` is emptied. When the shared forward fails, each prompt is retried
        alone so that only the faulty request fails."""
        if not group:
            return
        t0 = time.perf_counter()
        try:
            logits, row_kvs = self._runner.prefill_packed([r.prompt_ids for r in group])  # [n, V], per layer [1, H, L, D]
            tokens = self._sample_first(group, logits)
        except Exception as exc:  # nothing was emitted yet: retry one by one, or fail this request only
            if len(group) == 1:
                self._finish(group[0], RequestStatus.FINISHED_ERROR, error=f"prefill failed: {exc!r}")
            else:
                for req in group:
                    self._prefill_group([req])
            group.clear()
            return
        self._window.prefill(sum(r.num_prompt_tokens for r in group), time.perf_counter() - t0,
                             rows_waiting=len(self._rows), requests=len(group))
        try:
            self._batch.reserve(len(group), max(kv.length for kv in row_kvs))  # one relayout at most
        except Exception:  # e.g. out of device memory: each insert below tries alone and fails alone
            pass
        for req, token, row_kv in zip(group, tokens, row_kvs):
            self._start_decoding(req, token, row_kv)
        group.clear()

    def _prefill_chunk(self, req: Request, n: int) -> None:
        """Prefill the next `n` prompt tokens of a long prompt (chunked prefill). After the last chunk the
        request emits its first token and joins the batch; before it, it waits in the queue (`PREFILLING`),
        ahead of new work of its class, holding its K/V in its own cache."""
        t0 = time.perf_counter()
        start = req.num_prefilled
        try:
            logits, cache = self._runner.prefill_chunk(req.prompt_ids[start:start + n], start, req.prefill_cache)
            last = start + n == req.num_prompt_tokens
            tokens = self._sample_first([req], logits[None]) if last else None
        except Exception as exc:
            self._finish(req, RequestStatus.FINISHED_ERROR, error=f"prefill failed: {exc!r}")
            return
        req.num_prefilled, req.prefill_cache = start + n, cache
        self._window.prefill(n, time.perf_counter() - t0, rows_waiting=len(self._rows), requests=int(last))
        self._window.count("num_prefill_chunks")
        if not last:
            req.status = RequestStatus.PREFILLING
            self._scheduler.requeue(req)
            return
        req.prefill_cache = None
        self._start_decoding(req, tokens[0], self._runner.cache_to_row(cache))

    def _sample_first(self, reqs: list[Request], logits: torch.Tensor) -> list[int]:
        """First output token of each request from its prompt's last logits `[n, V]`."""
        st = SamplingTensors.build([r.params for r in reqs], logits.device)
        u = None if st.all_greedy else draw_uniforms([r.generator for r in reqs], self._generator, logits.device)
        return sample(logits, st, u).tolist()

    def _start_decoding(self, req: Request, token: int, row_kv) -> None:
        """Emit a prefilled request's first token and embed its K/V as a new batch row (unless it is done)."""
        req.status = RequestStatus.RUNNING
        req.start_seq = next(self._start_counter)
        if self._accept_token(req, token):
            return
        try:
            self._batch.insert(row_kv)
        except Exception as exc:  # e.g. out of device memory: this request only
            self._finish(req, RequestStatus.FINISHED_ERROR, error=f"inserting its K/V failed: {exc!r}")
            return
        self._window.count("num_inserts")
        self._rows.append(req)
        self._row_params = None

    def _decode_step(self) -> None:
        t0 = time.perf_counter()
        rows = self._rows
        try:
            if self._row_params is None:
                self._row_params = SamplingTensors.build([r.params for r in rows], self._runner.device)
            st = self._row_params
            input_ids = torch.tensor([[r.output_ids[-1]] for r in rows], device=self._runner.device)  # [B, 1]
            logits = self._runner.decode(self._batch, input_ids)  # [B, V]
            u = None if st.all_greedy else draw_uniforms([r.generator for r in rows], self._generator,
                                                         logits.device)
            tokens = sample(logits, st, u).tolist()
        except Exception as exc:  # the forward is shared: every row of this step fails, queued ones go on
            self._fail_rows(f"decode step failed: {exc!r}")
            return
        finished = [row for row, (req, tok) in enumerate(zip(rows, tokens)) if self._accept_token(req, tok)]
        for row in reversed(finished):
            self._remove_row(row)
        self._window.decode_step(len(tokens), time.perf_counter() - t0)

    def _remove_row(self, row: int) -> None:
        moved = self._batch.remove(row)
        if moved is not None:
            self._rows[row] = self._rows[moved]
        self._rows.pop()
        self._row_params = None
        self._window.count("num_removes")

    # --------------------------------------------------------------------------- per token
    def _accept_token(self, req: Request, token: int) -> bool:
        """Record one generated token and emit it. Returns True when the request finished."""
        try:
            req.output_ids.append(token)
            if req.first_token_time is None:
                req.first_token_time = time.perf_counter()
            finish = None
            text = ""
            if token in self._loaded.eos_token_ids and not req.params.ignore_eos:
                finish = RequestStatus.FINISHED_STOPPED
            else:
                text = req.detokenizer.add(token)
                if req.detokenizer.stopped:
                    finish = RequestStatus.FINISHED_STOPPED
            if finish is None and (req.num_output_tokens >= req.params.max_tokens or req.context_len >= req.max_len):
                finish = RequestStatus.FINISHED_LENGTH_CAPPED
            if finish is not None and not req.detokenizer.stopped:
                text += req.detokenizer.flush()
            self._window.generated(1)
            if finish is None:
                self._emit(req, TokenOutput(req.request_id, token, text, None, req.num_prompt_tokens,
                                            req.num_output_tokens, engine_step=self._step_count(),
                                            arrival_step=req.arrival_step))
                return req.status.is_finished  # the consumer went away while emitting
            self._finish(req, finish, token=token, text=text)
            return True
        except Exception as exc:  # e.g. a detokenizer fault: this request only
            self._finish(req, RequestStatus.FINISHED_ERROR, error=f"token handling failed: {exc!r}")
            return True

    def _emit(self, req: Request, out: TokenOutput) -> None:
        try:
            req.emit(out)
        except Exception:  # the consumer is gone (closed event loop): stop spending compute on it
            req.status = RequestStatus.FINISHED_ABORTED
            self._window.count("num_requests_cancelled")
            self._forget(req)

    def _finish(self, req: Request, status: RequestStatus, token: int | None = None, text: str = "",
                error: str | None = None) -> None:
        if req.status.is_finished:
            return
        req.status = status
        req.finish_time = time.perf_counter()
        req.prefill_cache = None  # a cancelled chunked prefill frees its K/V
        counter = {"cancelled": "num_requests_cancelled", "error": "num_requests_failed"}.get(
            status.value, "num_requests_finished")
        self._window.count(counter)
        out = TokenOutput(req.request_id, token, text, status.value, req.num_prompt_tokens,
                          req.num_output_tokens, error, engine_step=self._step_count(),
                          arrival_step=req.arrival_step)
        self._forget(req)
        self._final_outputs.append((req, out))  # sent after this iteration's stats are published

    def _send_final_outputs(self) -> None:
        outputs, self._final_outputs = self._final_outputs, []
        for req, out in outputs:
            try:
                req.emit(out)
            except Exception:  # the consumer is gone; nothing left to tell it
                pass

    def _step_count(self) -> int:
        return self._window.counters["num_decode_steps"]

    def _forget(self, req: Request) -> None:
        with self._lock:
            self._live.pop(req.request_id, None)
            self._finished_ids.append(req.request_id)

    def _publish_stats(self) -> None:
        b = self._batch
        rows = tuple(RowStats(r.request_id, r.priority.name.lower(), r.status.value, r.context_len,
                              r.num_output_tokens) for r in self._rows)
        waiting_reqs = self._scheduler.waiting()
        waiting = tuple(RowStats(r.request_id, r.priority.name.lower(), r.status.value, r.context_len,
                                 r.num_output_tokens) for r in waiting_reqs)
        window = b.size * b.seq_len * b.bytes_per_token
        held = self._prefill_cache_bytes()
        self._window.peak("peak_kv_window_bytes", window)
        self._window.peak("peak_kv_bytes", window + held)
        self._stats = self._window.snapshot(rows=rows, waiting=waiting, kv_cache_bytes=b.capacity_bytes,
                                            kv_used_bytes=b.used_bytes, kv_window_bytes=window,
                                            prefill_cache_bytes=held,
                                            kv_budget_bytes=self._budget or 0,
                                            swapped_bytes=sum(r.swapped.nbytes for r in waiting_reqs
                                                              if r.swapped is not None),
                                            padding_fraction=b.padding_fraction,
                                            seq_len=b.seq_len, device=str(self._loaded.device),
                                            model=self._loaded.name)
