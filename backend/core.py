"""The engine core: the state the engine thread owns and one iteration of the BATON loop.

Iteration (BATON, arXiv 2410.18701 §4): admit waiting requests by priority -> prefill the newcomers apart from
the decoding rows (one packed forward for those admitted together; a prompt longer than the iteration's token
budget in chunks over several iterations) and embed each one's K/V into the batch (§4.1 vector shaping, §4.2 KV
embedding) -> one decode step for all rows -> sample -> emit tokens -> retire finished rows at once (and trim
all-padding columns). Preemption swaps rows out to host memory and back (§4.3).

Only the engine thread touches an `EngineCore`; `backend.engine.Engine` is the thread-safe front end that feeds
it requests and cancels. An error in one request (a failed prefill, a broken consumer) fails that request only.
"""

from __future__ import annotations

import itertools
import time
from typing import Callable, Sequence

import psutil
import torch

from .config import EngineConfig, Priority
from .kv_budget import kv_window_bytes
from .memory import read_device_memory
from .models import LoadedModel
from .request import Request, RequestStatus, TokenOutput
from .runner import ModelRunner
from .sampler import SamplingTensors, draw_uniforms, sample
from .scheduler import MemoryView, Scheduler
from .stats import EngineStats, RowStats, StatsWindow

_MIN_CHUNK_TOKENS = 128  # a prefill chunk that only fills the rest of an iteration's budget is at least this long


class EngineCore:
    """The running batch, the waiting queue and the model runner, stepped by the engine thread.

    Args:
        config: the engine's configuration.
        loaded: the model.
        on_finished: called with a request id when that request ends (from the engine thread).

    Attributes:
        runner: the `ModelRunner` (every forward pass).
        batch: the `RunningBatch` (K/V `[batch, kv_heads, seq, head_dim]` per layer); row i <-> `rows[i]`.
        rows: the running requests, in row order.
        scheduler: the waiting queue (new, swapped-out and part-prefilled requests).
        window: counters and recent rates; `stats` is the snapshot published after every iteration.
    """

    def __init__(self, config: EngineConfig, loaded: LoadedModel, on_finished: Callable[[str], None]):
        self.config = config
        self._loaded = loaded
        self._on_finished = on_finished
        self.runner = ModelRunner(loaded.model, loaded.device)
        self.batch = self.runner.new_batch(config.max_batch_size)
        self.rows: list[Request] = []
        self._row_params: SamplingTensors | None = None
        self.scheduler = Scheduler(config.max_preemptions)
        self._start_counter = itertools.count()
        self._cpu_kv_budget = min(8 * 2**30, int(0.4 * psutil.virtual_memory().total))
        self._budget: int | None = None  # this iteration's KV budget (bytes), set by step()
        self.window = StatsWindow()
        self._generator = torch.Generator().manual_seed(config.seed)
        self._final_outputs: list[tuple[Request, TokenOutput]] = []
        self.stats = EngineStats.empty()

    # ----------------------------------------------------------------------------- front end
    @property
    def idle(self) -> bool:
        """No running row and nothing queued: the engine thread may block on its inbox."""
        return not self.rows and not len(self.scheduler)

    @property
    def bytes_per_token(self) -> int:
        """K/V bytes of one token of one row, all layers."""
        return self.batch.bytes_per_token

    def add(self, reqs: Sequence[Request]) -> None:
        """Queue new requests (each remembers the decode step at which it arrived)."""
        for req in reqs:
            req.arrival_step = self._step_count()
            self.scheduler.add(req)
            self.window.count("num_requests_received")

    def step(self) -> None:
        """One iteration: admit (prefill, swap in, preempt), relieve memory pressure, decode, publish."""
        self._budget = self._kv_budget()  # one device-memory reading per iteration
        self._admit()
        self._relieve_memory_pressure()
        if self.rows:
            self._decode_step()
        self._publish_stats()
        self._send_final_outputs()

    def recover(self, exc: Exception) -> None:
        """After an unexpected fault in `step`: fail the running rows and go on from an empty batch."""
        self.fail_rows(f"engine fault: {exc!r}")
        self._send_final_outputs()

    def shut_down(self, late: Sequence[Request] = ()) -> None:
        """End every running, queued and `late` request with `cancelled` ("engine shut down")."""
        for req in [*self.rows, *self.scheduler.waiting(), *late]:
            self._finish(req, RequestStatus.FINISHED_ABORTED, error="engine shut down")
        self.rows.clear()
        self._publish_stats()
        self._send_final_outputs()

    def close(self) -> None:
        """Release the runner's resources."""
        self.runner.close()

    # ------------------------------------------------------------------------------ the loop
    def fail_rows(self, error: str) -> None:
        """Fail every running row and start from an empty batch (queued requests are kept); used when a
        step fails in a way that leaves the batch in doubt."""
        for req in self.rows:
            self._finish(req, RequestStatus.FINISHED_ERROR, error=error)
        self.rows = []
        self._row_params = None
        self.batch = self.runner.new_batch(self.config.max_batch_size)

    def cancel(self, request_id: str) -> None:
        """Cancel a queued or running request (it ends `cancelled`); a finished one is left alone."""
        req = self.scheduler.remove(request_id)
        if req is None:
            row = next((i for i, r in enumerate(self.rows) if r.request_id == request_id), None)
            if row is None:
                return  # already finished
            req = self.rows[row]
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
                if not req.status.is_finished and all(r is not req for r in self.rows):
                    self._finish(req, RequestStatus.FINISHED_ERROR, error=f"engine fault: {exc!r}")
            raise

    def _prefill_budget(self, req: Request, group: list[Request]) -> int:
        """Prompt tokens this iteration may prefill up to and including `req` (see `EngineConfig`)."""
        budget, background = self.config.max_prefill_tokens, self.config.max_background_prefill_tokens
        if background is None or req.priority == Priority.INTERACTIVE:
            return budget
        chatting = any(r.priority == Priority.INTERACTIVE for r in itertools.chain(self.rows, group))
        return min(budget, background) if chatting else budget

    def _admit_into(self, group: list[Request]) -> None:
        spent = 0
        while (req := self.scheduler.peek()) is not None:
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
            if (len(self.rows) + len(group) < self.config.max_batch_size
                    and self._memory_view(group, admitting=req).fits_after_insert(length)):
                self.scheduler.pop()
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
            victim = self.scheduler.choose_victim(self.rows, int(req.priority))
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
            victim = self.scheduler.choose_victim(self.rows, None)
            holder = self.scheduler.choose_prefill_to_drop()
            if holder is not None and (victim is None or holder.priority >= self.rows[victim].priority):
                self._drop_partial_prefill(holder)
            elif victim is not None:
                self._swap_out(victim)
            else:
                return

    def _drop_partial_prefill(self, req: Request) -> None:
        """Free the K/V a queued long prompt holds between prefill chunks; it starts its prefill again."""
        req.prefill_cache, req.num_prefilled = None, 0
        req.status = RequestStatus.WAITING
        self.window.count("num_prefill_restarts")

    def _swap_out(self, row: int) -> None:
        """Preempt one row: copy its K/V to host memory (pinned on CUDA), free the row, requeue it."""
        req = self.rows[row]
        req.swapped = self.batch.extract(row, device="cpu", pin_memory=self.runner.device.type == "cuda")
        self._remove_row(row)
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.scheduler.requeue(req)
        self.window.count("num_preemptions")
        self.window.count("num_swap_outs")
        self.window.count("num_swapped_out_bytes", req.swapped.nbytes)

    def _swap_in(self, req: Request) -> None:
        """Bring a preempted row back: its K/V bytes return unchanged, decoding resumes where it stopped."""
        self.batch.insert(req.swapped)
        self.window.count("num_swap_ins")
        req.swapped = None
        req.status = RequestStatus.RUNNING
        self.rows.append(req)
        self._row_params = None

    def _memory_view(self, pending: Sequence[Request] = (), admitting: Request | None = None) -> MemoryView:
        """The batch's memory as the scheduler sees it, with `pending` newcomers counted as rows already.

        Under a fixed budget the K/V that long prompts hold between prefill chunks count too (except
        `admitting`'s own, which its new row replaces); a budget read from free device memory already
        excludes them.
        """
        b = self.batch
        seq_len = max([b.seq_len, *(r.num_prompt_tokens for r in pending)])
        held = 0
        if self.fixed_kv_budget() is not None:
            own = admitting.held_prefill_tokens if admitting is not None else 0
            held = self._prefill_cache_bytes() - own * b.bytes_per_token
        return MemoryView(len(self.rows) + len(pending), seq_len, b.bytes_per_token, self._budget,
                          self.config.memory_low_watermark, self.config.memory_high_watermark, held)

    def _prefill_cache_bytes(self) -> int:
        """K/V bytes held by long prompts between prefill chunks (outside the batch's buffers)."""
        return self.scheduler.prefilled_tokens() * self.batch.bytes_per_token

    def fixed_kv_budget(self) -> int | None:
        """The KV budget in bytes when it is fixed (`kv_budget_bytes`, or the CPU default); None on CUDA, where
        it follows free device memory (`_kv_budget`)."""
        if self.config.kv_budget_bytes is not None:
            return self.config.kv_budget_bytes
        return self._cpu_kv_budget if self.runner.device.type != "cuda" else None

    def _kv_budget(self) -> int | None:
        """Bytes the padded KV window may take now (see `EngineConfig.kv_budget_bytes`)."""
        fixed = self.fixed_kv_budget()
        if fixed is not None:
            return fixed
        mem = read_device_memory(self.runner.device)
        used = mem.used_bytes - mem.torch_reserved_bytes + mem.torch_allocated_bytes  # other processes + live tensors
        window = kv_window_bytes(len(self.rows), self.batch.seq_len, self.batch.bytes_per_token, decode_column=True)
        return max(self.batch.bytes_per_token, window + mem.total_bytes - used)

    def _prefill_group(self, group: list[Request]) -> None:
        """Prefill newcomers (together, in one packed forward), emit their first tokens, and embed their
        K/V as new batch rows; `group` is emptied. When the shared forward fails, each prompt is retried
        alone so that only the faulty request fails."""
        if not group:
            return
        t0 = time.perf_counter()
        try:
            logits, row_kvs = self.runner.prefill_packed([r.prompt_ids for r in group])  # [n, V], per layer [1, H, L, D]
            tokens = self._sample_first(group, logits)
        except Exception as exc:  # nothing was emitted yet: retry one by one, or fail this request only
            if len(group) == 1:
                self._finish(group[0], RequestStatus.FINISHED_ERROR, error=f"prefill failed: {exc!r}")
            else:
                for req in group:
                    self._prefill_group([req])
            group.clear()
            return
        self.window.prefill(sum(r.num_prompt_tokens for r in group), time.perf_counter() - t0,
                             rows_waiting=len(self.rows), requests=len(group))
        try:
            self.batch.reserve(len(group), max(kv.length for kv in row_kvs))  # one relayout at most
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
            logits, cache = self.runner.prefill_chunk(req.prompt_ids[start:start + n], start, req.prefill_cache)
            last = start + n == req.num_prompt_tokens
            tokens = self._sample_first([req], logits[None]) if last else None
        except Exception as exc:
            self._finish(req, RequestStatus.FINISHED_ERROR, error=f"prefill failed: {exc!r}")
            return
        req.num_prefilled, req.prefill_cache = start + n, cache
        self.window.prefill(n, time.perf_counter() - t0, rows_waiting=len(self.rows), requests=int(last))
        self.window.count("num_prefill_chunks")
        if not last:
            req.status = RequestStatus.PREFILLING
            self.scheduler.requeue(req)
            return
        req.prefill_cache = None
        self._start_decoding(req, tokens[0], self.runner.cache_to_row(cache))

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
            self.batch.insert(row_kv)
        except Exception as exc:  # e.g. out of device memory: this request only
            self._finish(req, RequestStatus.FINISHED_ERROR, error=f"inserting its K/V failed: {exc!r}")
            return
        self.window.count("num_inserts")
        self.rows.append(req)
        self._row_params = None

    def _decode_step(self) -> None:
        t0 = time.perf_counter()
        rows = self.rows
        try:
            if self._row_params is None:
                self._row_params = SamplingTensors.build([r.params for r in rows], self.runner.device)
            st = self._row_params
            input_ids = torch.tensor([[r.output_ids[-1]] for r in rows], device=self.runner.device)  # [B, 1]
            logits = self.runner.decode(self.batch, input_ids)  # [B, V]
            u = None if st.all_greedy else draw_uniforms([r.generator for r in rows], self._generator,
                                                         logits.device)
            tokens = sample(logits, st, u).tolist()
        except Exception as exc:  # the forward is shared: every row of this step fails, queued ones go on
            self.fail_rows(f"decode step failed: {exc!r}")
            return
        finished = [row for row, (req, tok) in enumerate(zip(rows, tokens)) if self._accept_token(req, tok)]
        for row in reversed(finished):
            self._remove_row(row)
        self.window.decode_step(len(tokens), time.perf_counter() - t0)

    def _remove_row(self, row: int) -> None:
        moved = self.batch.remove(row)
        if moved is not None:
            self.rows[row] = self.rows[moved]
        self.rows.pop()
        self._row_params = None
        self.window.count("num_removes")

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
            self.window.generated(1)
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
            self.window.count("num_requests_cancelled")
            self._on_finished(req.request_id)

    def _finish(self, req: Request, status: RequestStatus, token: int | None = None, text: str = "",
                error: str | None = None) -> None:
        if req.status.is_finished:
            return
        req.status = status
        req.finish_time = time.perf_counter()
        req.prefill_cache = None  # a cancelled chunked prefill frees its K/V
        counter = {"cancelled": "num_requests_cancelled", "error": "num_requests_failed"}.get(
            status.value, "num_requests_finished")
        self.window.count(counter)
        out = TokenOutput(req.request_id, token, text, status.value, req.num_prompt_tokens,
                          req.num_output_tokens, error, engine_step=self._step_count(),
                          arrival_step=req.arrival_step)
        self._on_finished(req.request_id)
        self._final_outputs.append((req, out))  # sent after this iteration's stats are published

    def _send_final_outputs(self) -> None:
        outputs, self._final_outputs = self._final_outputs, []
        for req, out in outputs:
            try:
                req.emit(out)
            except Exception:  # the consumer is gone; nothing left to tell it
                pass

    def _step_count(self) -> int:
        return self.window.counters["num_decode_steps"]

    def _publish_stats(self) -> None:
        b = self.batch
        rows = tuple(RowStats(r.request_id, r.priority.name.lower(), r.status.value, r.context_len,
                              r.num_output_tokens) for r in self.rows)
        waiting_reqs = self.scheduler.waiting()
        waiting = tuple(RowStats(r.request_id, r.priority.name.lower(), r.status.value, r.context_len,
                                 r.num_output_tokens) for r in waiting_reqs)
        window = kv_window_bytes(b.size, b.seq_len, b.bytes_per_token, decode_column=False)
        held = self._prefill_cache_bytes()
        self.window.peak("peak_kv_window_bytes", window)
        self.window.peak("peak_kv_bytes", window + held)
        self.stats = self.window.snapshot(rows=rows, waiting=waiting, kv_cache_bytes=b.capacity_bytes,
                                            kv_used_bytes=b.used_bytes, kv_window_bytes=window,
                                            prefill_cache_bytes=held,
                                            kv_budget_bytes=self._budget or 0,
                                            swapped_bytes=sum(r.swapped.nbytes for r in waiting_reqs
                                                              if r.swapped is not None),
                                            padding_fraction=b.padding_fraction,
                                            seq_len=b.seq_len, device=str(self._loaded.device),
                                            model=self._loaded.name)
