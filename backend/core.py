"""The engine core: the state the engine thread owns and one iteration of the BATON loop.

Iteration (BATON, arXiv 2410.18701 §4): the scheduler plans (`Scheduler.schedule` -> `SchedulerOutput`: which
waiting requests are admitted by priority, which rows are preempted) -> the core executes the plan: swap-ins,
prefills of the newcomers apart from the decoding rows (one packed forward for those admitted together; a prompt
longer than the iteration's token budget in chunks over several iterations) with each one's K/V embedded into
the batch (§4.1 vector shaping, §4.2 KV embedding), preemptions that swap rows out to host memory (§4.3) -> one
decode step for all rows -> sample -> emit tokens -> retire finished rows at once (and trim all-padding columns).

Only the engine thread touches an `EngineCore`; `backend.engine.Engine` is the thread-safe front end that feeds
it requests and cancels. An error in one request (a failed prefill, a broken consumer) fails that request only.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import psutil
import torch

from .config import EngineConfig, Priority
from .kv_budget import kv_window_bytes
from .memory import read_device_memory
from .models import LoadedModel
from .prefix_reuse import MIN_SHARED_TOKENS, PrefixReuse
from .request import Request, RequestStatus, TokenOutput
from .row_parking import ParkedRow
from .runner import ModelRunner
from .sampler import SamplingTensors, draw_uniforms, sample
from .sched_output import ADMISSIONS, DropPrefill, Preempt, PrefillChunk, PrefillGroup, SchedulerOutput, Step, SwapIn
from .scheduler import BatchSnapshot, Scheduler
from .stats import RowStats, StatsWindow
from .step_abort import StepAborted, truncate_cache
from .step_cost import StepCostModel
from .swap_space import SwapSpace


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
        step_cost: the decode, prefill and copy costs learned from this engine's own timings
            (`step_cost.StepCostModel`); the scheduler keeps `interactive_tpot_slo` with it.
    """

    def __init__(self, config: EngineConfig, loaded: LoadedModel, on_finished: Callable[[str], None]):
        self.config = config
        self._loaded = loaded
        self._on_finished = on_finished
        self.runner = ModelRunner(loaded.model, loaded.device, compile=config.compile)
        self.batch = self.runner.new_batch(config.max_batch_size)
        self.rows: list[Request] = []
        self._row_params: SamplingTensors | None = None
        self.scheduler = Scheduler(config.max_preemptions)
        self._next_start_seq = 0  # admission number of the next row that starts decoding
        self._cpu_kv_budget = min(8 * 2**30, int(0.4 * psutil.virtual_memory().total))
        self._budget: int | None = None  # this iteration's KV budget (bytes), set by step()
        self.window = StatsWindow()
        self.step_cost = StepCostModel()
        self.swap_space = SwapSpace(self.runner.dtype, pin_memory=loaded.device.type == "cuda")
        self._last_plan = SchedulerOutput()
        self.prefix = PrefixReuse(config, self.runner, self.window)
        self._generator = torch.Generator().manual_seed(config.seed)
        self._final_outputs: list[tuple[Request, TokenOutput]] = []
        self._budget = self._kv_budget()
        self._publish_stats()  # the truth from the start (the model, the KV budget, the prefix cache's bound)

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
        """One iteration: schedule, execute the plan (swap-ins, prefills, preemptions), send the final outputs
        of requests that ended in it (at their first token, or failed), decode every row (emitting its token and
        retiring it when finished), publish stats and final outputs."""
        self._budget = self._kv_budget()  # one device-memory reading per iteration
        if self.prefix.enabled:
            self.prefix.seed(self._admission_candidates())
        plan = self._last_plan = self.scheduler.schedule(self.snapshot())
        if plan.slo_held_back:
            self.window.count("num_slo_held_back")
        if self.prefix.enabled and self.fixed_kv_budget() is None:
            self._give_back_prefix_cache(plan)
        try:
            self._execute(plan)
            self.send_finished()  # a request that ended in the plan (at its first token) does not wait for the decode
            if self.rows:
                self._decode_step()
        except StepAborted:  # an interactive request arrived: the next plan admits it (`step_abort.py`)
            self.window.count("num_aborted_forwards")
        self._release_if_idle()
        self._publish_stats()
        self._send_final_outputs()

    def _admission_candidates(self) -> list[Request]:
        """The head of the queue that this iteration could admit: as many as there are free rows plus rows
        of lower priority that could be preempted for them (an upper bound; the plan decides)."""
        free = self.config.max_batch_size - len(self.rows)
        out = []
        for i, req in enumerate(self.scheduler.head(self.config.max_batch_size)):
            if i >= free + sum(1 for r in self.rows if r.priority > req.priority):
                break
            out.append(req)
        return out

    def snapshot(self) -> BatchSnapshot:
        """The running batch and this iteration's budgets as the scheduler reads them (no tensors)."""
        cfg, b = self.config, self.batch
        return BatchSnapshot(b.bytes_per_token, self._budget, cfg.memory_low_watermark, cfg.memory_high_watermark,
                             cfg.max_batch_size, cfg.max_prefill_tokens, cfg.max_background_prefill_tokens,
                             rows=tuple(self.rows), row_lengths=tuple(b.lengths), seq_len=b.seq_len,
                             budget_is_fixed=self.fixed_kv_budget() is not None,
                             next_start_seq=self._next_start_seq, interactive_tpot_slo=cfg.interactive_tpot_slo,
                             step_cost=self.step_cost, row_capacity=b.cap_batch,
                             abort_layers=self.runner.abort_layers)

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

    def send_finished(self) -> None:
        """Publish stats and send the final outputs of requests that ended between iterations (cancelled from
        the inbox) or in this iteration's plan now, rather than after the next decode step."""
        if self._final_outputs:
            self._publish_stats()
            self._send_final_outputs()

    def close(self) -> None:
        """Release the runner's resources."""
        self.runner.close()

    # ------------------------------------------------------------------------------ the loop
    def fail_rows(self, error: str) -> None:
        """Fail every running row and start from an empty batch (queued requests are kept: rows parked in the
        old batch are spilled to host memory first, or fail when that fails); used when a step fails in a way
        that leaves the batch in doubt."""
        for req in self.rows:
            self._finish(req, RequestStatus.FINISHED_ERROR, error=error)
        try:
            self.batch.spill_all()
        except Exception as exc:
            for req in self.scheduler.waiting():
                if isinstance(req.swapped, ParkedRow) and req.swapped.spilled is None:
                    self.scheduler.remove(req.request_id)
                    self._finish(req, RequestStatus.FINISHED_ERROR, error=f"{error}; its parked K/V: {exc!r}")
        self.rows = []
        self._row_params = None
        self.batch = self.runner.new_batch(self.config.max_batch_size)

    def cancel(self, request_id: str) -> None:
        """Cancel a queued or running request (it ends `cancelled`); a finished one is left alone."""
        req = self.scheduler.remove(request_id)
        if req is not None and isinstance(req.swapped, ParkedRow):
            self.batch.drop_parked(req.swapped)  # its buffer row is free again
        if req is None:
            row = next((i for i, r in enumerate(self.rows) if r.request_id == request_id), None)
            if row is None:
                return  # already finished
            req = self.rows[row]
            self.prefix.keep_row(req, self.batch, row)  # a cancelled row's blocks stay useful
            self._remove_row(row)
        self._finish(req, RequestStatus.FINISHED_ABORTED)
        self._release_if_idle()

    def _execute(self, plan: SchedulerOutput) -> None:
        """Carry out the scheduler's plan, step by step in its order (BATON §4: swap-ins, prefills apart from
        the decoding rows with KV embedding, preemptions, dropped partial prefills).

        A step whose request is no longer where the plan expects it (it failed, or ended at its first token,
        earlier in this plan) is skipped: a failure only frees room. An unexpected exception (an engine fault)
        fails the requests the step took from the queue, so that none is lost, and is raised again.
        """
        steps = list(plan.steps)
        while steps:
            step = steps.pop(0)
            try:
                if isinstance(step, Preempt):  # consecutive swap-outs leave the batch together (one compaction)
                    group = [step]
                    while steps and isinstance(steps[0], Preempt):
                        group.append(steps.pop(0))
                    self._swap_out_many([(p.request, p.slo) for p in group])
                else:
                    self._run_step(step)
            except StepAborted:  # the step put its requests back in the queue; the rest of the plan waits
                raise
            except Exception as exc:
                if isinstance(step, ADMISSIONS):
                    for req in step.requests:
                        if not (req.status.is_finished or req in self.rows or req in self.scheduler):
                            self._finish(req, RequestStatus.FINISHED_ERROR, error=f"engine fault: {exc!r}")
                raise

    def _run_step(self, step: Step) -> None:
        """Run one step of a plan; the requests it admits are taken from the queue first."""
        match step:
            case SwapIn() | PrefillGroup() | PrefillChunk() if self.runner.abort.pending and \
                    self._may_abort(step.requests):  # a chat arrived: it goes before the rest of the plan
                raise StepAborted("an interactive request arrived")
            case SwapIn(req):
                if req.swapped is not None and self.scheduler.take(req):
                    self._swap_in(req)
            case PrefillGroup(reqs):
                self._prefill_group([r for r in reqs if self.scheduler.take(r)])
            case PrefillChunk(req, start, num_tokens):
                if req.num_prefilled == start and self.scheduler.take(req):
                    if not start and self.prefix.enabled and self.prefix.seed_one(req):
                        # an earlier step of this plan cached its prefix: go on from there, same budget
                        num_tokens = min(num_tokens, req.num_prompt_tokens - req.num_prefilled)
                    self._prefill_chunk(req, num_tokens)
            case Preempt(req, _, slo):
                self._swap_out_many([(req, slo)])
            case DropPrefill(req):
                if req.held_prefill_tokens:
                    self._drop_partial_prefill(req)

    def _drop_partial_prefill(self, req: Request) -> None:
        """Free the K/V a queued long prompt holds between prefill chunks; it starts its prefill again."""
        req.prefill_cache, req.num_prefilled = None, 0
        self.prefix.forget_seed(req)
        req.status = RequestStatus.WAITING
        self.window.count("num_prefill_restarts")

    def _swap_out_many(self, victims: list[tuple[Request, bool]]) -> None:
        """Preempt rows: copy each one's K/V to host memory (swap space, pinned on CUDA), requeue it, then free
        all their rows at once (`RunningBatch.remove_and_park`: one copy per surviving row that moves). A swap-out
        for the interactive target (`slo`) is not counted toward `max_preemptions` (`sched_slo.py`), and where the
        batch can park rows (a CPU: host memory is the batch's own RAM) it copies nothing: the row is paused in
        place (`row_parking.py`) and resumed from there. A victim no longer in the batch (it finished earlier in
        this plan) is skipped."""
        on_cuda, b = self.runner.device.type == "cuda", self.batch
        index = {id(r): i for i, r in enumerate(self.rows)}
        rows, park, out = [], [], []
        for req, slo in victims:
            row = index.get(id(req))
            if row is None:
                continue
            out.append(req)
            if slo and b.can_park:
                park.append((row, req))
            else:
                t0 = time.perf_counter()
                into = self.swap_space.take(b.row_numel(b.lengths[row]), b.row_numel(1))
                req.swapped = b.extract(row, device="cpu", pin_memory=on_cuda, into=into)
                if not on_cuda:  # on CUDA the copy into pinned memory is asynchronous: its time is not known here
                    self.step_cost.observe_copy(req.swapped.nbytes, (time.perf_counter() - t0) * 1000)
                self.window.count("num_swapped_out_bytes", req.swapped.nbytes)
                rows.append(row)
            req.status = RequestStatus.PREEMPTED
            if slo:
                self.window.count("num_slo_swap_outs")
            else:
                req.num_preemptions += 1
                self.window.count("num_preemptions")
            self.window.count("num_swap_outs")
        handles = self._remove_rows(rows, park=[row for row, _ in park])
        for row, req in park:
            req.swapped = handles[row]
            self.window.count("num_parks")
        for req in out:  # queued once `swapped` is set: swapped work goes before new work of its class
            self.scheduler.requeue(req)

    def _swap_in(self, req: Request) -> None:
        """Bring a preempted row back: its K/V bytes return unchanged (from host memory, or from where it was
        parked), decoding resumes where it stopped."""
        t0, relayouts = time.perf_counter(), self.batch.num_relayouts
        if isinstance(req.swapped, ParkedRow):
            self.batch.unpark(req.swapped)
        else:
            self.batch.insert(req.swapped)
        if self.batch.num_relayouts == relayouts:
            self.step_cost.observe_copy(req.swapped.nbytes, (time.perf_counter() - t0) * 1000)
        self.window.count("num_swap_ins")
        self.swap_space.give(req.swapped.storage)  # the insert has copied it (synchronously)
        req.swapped = None
        req.status = RequestStatus.RUNNING
        self.rows.append(req)
        self._row_params = None

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
        # the prefix cache's device blocks count as free: they are given back before the batch goes without
        return max(self.batch.bytes_per_token, window + mem.total_bytes - used + self.prefix.device_bytes)

    def _give_back_prefix_cache(self, plan: SchedulerOutput) -> None:
        """Under a budget read from device memory, shrink the prefix cache's device tier so that the planned
        window (and the K/V held between prefill chunks) fits first: the cache never makes a live request wait
        or be swapped out."""
        bpt = self.batch.bytes_per_token
        need = kv_window_bytes(plan.num_rows, plan.seq_len, bpt, decode_column=True) + plan.num_held_prefill_tokens * bpt
        self.prefix.give_back(int(self._budget * self.config.memory_high_watermark) - need)

    def _prefill_group(self, group: list[Request], share: bool = True) -> None:
        """Prefill newcomers (together, in one packed forward), emit their first tokens, and embed their
        K/V as new batch rows. When the shared forward fails, each prompt is retried alone so that only the
        faulty request fails. With `share`, newcomers that share a long prefix with an earlier one start from
        its cached blocks instead of computing it again (`PrefixReuse.split_group`)."""
        if not group:
            return
        if share:
            leaders, followers = self.prefix.split_group(group)
            try:
                self._prefill_group(leaders, share=False)
                rest = []
                for req in followers:  # the leaders' blocks are cached now
                    if not req.status.is_finished and self.prefix.seed_one(req, MIN_SHARED_TOKENS):
                        self._prefill_chunk(req, req.num_prompt_tokens - req.num_prefilled)
                    else:
                        rest.append(req)
                self._prefill_group(rest, share=False)
            except StepAborted:
                self._requeue_unplaced(group)
                raise
            return
        for req in group:
            self.prefix.count(req)
        t0 = time.perf_counter()
        try:
            with self.runner.abort.arm(self._may_abort(group)):
                logits, row_kvs = self.runner.prefill_packed([r.prompt_ids for r in group])  # [n, V], [1, H, L, D]
            tokens = self._sample_first(group, logits)
        except StepAborted:
            self._requeue_unplaced(group)
            raise
        except Exception as exc:  # nothing was emitted yet: retry one by one, or fail this request only
            if len(group) == 1:
                self._finish(group[0], RequestStatus.FINISHED_ERROR, error=f"prefill failed: {exc!r}")
            else:
                for req in group:
                    self._prefill_group([req], share=False)
            return
        prompt_tokens, seconds = sum(r.num_prompt_tokens for r in group), time.perf_counter() - t0
        self.window.prefill(prompt_tokens, seconds, rows_waiting=len(self.rows), requests=len(group))
        self.step_cost.observe_prefill(prompt_tokens, seconds * 1000)
        try:
            self.batch.reserve(len(group), max(kv.length for kv in row_kvs))  # one relayout at most
        except Exception:  # e.g. out of device memory: each insert below tries alone and fails alone
            pass
        for req, token, row_kv in zip(group, tokens, row_kvs):
            self.prefix.keep_prompt(req, row_kv)
            self._start_decoding(req, token, row_kv)

    def _prefill_chunk(self, req: Request, n: int) -> None:
        """Prefill the next `n` prompt tokens of a long prompt (chunked prefill). After the last chunk the
        request emits its first token and joins the batch; before it, it waits in the queue (`PREFILLING`),
        ahead of new work of its class, holding its K/V in its own cache."""
        self.prefix.count(req)
        t0 = time.perf_counter()
        start = req.num_prefilled
        try:
            with self.runner.abort.arm(self._may_abort([req])):
                logits, cache = self.runner.prefill_chunk(req.prompt_ids[start:start + n], start, req.prefill_cache)
            last = start + n == req.num_prompt_tokens
            tokens = self._sample_first([req], logits[None]) if last else None
        except StepAborted:  # layers the chunk reached hold its K/V: cut them back, and queue it again
            if req.prefill_cache is not None:
                truncate_cache(req.prefill_cache, start)
            self._requeue_unplaced([req])
            raise
        except Exception as exc:
            self._finish(req, RequestStatus.FINISHED_ERROR, error=f"prefill failed: {exc!r}")
            return
        req.num_prefilled, req.prefill_cache = start + n, cache
        seconds = time.perf_counter() - t0
        self.window.prefill(n, seconds, rows_waiting=len(self.rows), requests=int(last))
        self.step_cost.observe_prefill(n, seconds * 1000)
        self.window.count("num_prefill_chunks")
        if not last:
            req.status = RequestStatus.PREFILLING
            self.scheduler.requeue(req)
            return
        req.prefill_cache = None
        row_kv = self.runner.cache_to_row(cache)
        self.prefix.keep_prompt(req, row_kv)
        self._start_decoding(req, tokens[0], row_kv)

    def _sample_first(self, reqs: list[Request], logits: torch.Tensor) -> list[int]:
        """First output token of each request from its prompt's last logits `[n, V]`."""
        st = SamplingTensors.build([r.params for r in reqs], logits.device)
        u = None if st.all_greedy else draw_uniforms([r.generator for r in reqs], self._generator, logits.device)
        return sample(logits, st, u).tolist()

    def _start_decoding(self, req: Request, token: int, row_kv) -> None:
        """Emit a prefilled request's first token and embed its K/V as a new batch row (unless it is done)."""
        req.status = RequestStatus.RUNNING
        req.start_seq, self._next_start_seq = self._next_start_seq, self._next_start_seq + 1
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
        """One decode step over every row; its time (ms) teaches the step cost model, unless the window was
        relaid out during it (a copy, not the step's own cost)."""
        t0 = time.perf_counter()
        rows, seq_len, relayouts = self.rows, self.batch.seq_len, self.batch.num_relayouts
        try:
            if self._row_params is None:
                self._row_params = SamplingTensors.build([r.params for r in rows], self.runner.device)
            st = self._row_params
            input_ids = torch.tensor([[r.output_ids[-1]] for r in rows], device=self.runner.device)  # [B, 1]
            with self.runner.abort.arm(self._may_abort(rows)):
                logits = self.runner.decode(self.batch, input_ids)  # [B, V]
            u = None if st.all_greedy else draw_uniforms([r.generator for r in rows], self._generator,
                                                         logits.device)
            tokens = sample(logits, st, u).tolist()
        except StepAborted:  # nothing sampled; the K/V written for this step are padding (`step_abort.py`)
            raise
        except Exception as exc:  # the forward is shared: every row of this step fails, queued ones go on
            self.fail_rows(f"decode step failed: {exc!r}")
            return
        finished = [row for row, (req, tok) in enumerate(zip(rows, tokens)) if self._accept_token(req, tok)]
        for row in finished:
            self.prefix.keep_row(rows[row], self.batch, row)
        self._remove_rows(finished)
        seconds = time.perf_counter() - t0
        self.window.decode_step(len(tokens), seconds)
        if self.batch.num_relayouts == relayouts:
            self.step_cost.observe_decode(len(tokens), seq_len, seconds * 1000)

    def _may_abort(self, reqs: Sequence[Request]) -> bool:
        """May a forward over `reqs` be stopped for an interactive arrival (`step_abort.py`)? Only when no
        interactive request is in it, in the batch or at the head of the queue (one that waits there could
        not be admitted sooner by stopping this forward)."""
        def interactive(r: Request) -> bool:
            return r.priority == Priority.INTERACTIVE
        head = self.scheduler.peek()
        return not (any(map(interactive, reqs)) or any(map(interactive, self.rows))
                    or (head is not None and interactive(head)))

    def _requeue_unplaced(self, reqs: Sequence[Request]) -> None:
        """Put back in the queue the requests of a stopped forward that are neither finished, running nor
        queued (they keep their arrival order; a part-prefilled one keeps its K/V)."""
        for req in reqs:
            if not (req.status.is_finished or req in self.rows or req in self.scheduler):
                self.scheduler.requeue(req)

    def _remove_row(self, row: int) -> None:
        self._remove_rows([row])

    def _remove_rows(self, rows: list[int], park: Sequence[int] = ()) -> dict[int, ParkedRow]:
        """Take rows out of the batch (finished, cancelled or swapped out) and pause `park` in place; the batch
        keeps its buffers while work is queued (it is about to grow again) and frees them when nothing is.
        Returns the parked rows by their old index."""
        if not rows and not park:
            return {}
        moved, handles = self.batch.remove_and_park(rows, list(park), keep_buffers=bool(len(self.scheduler)))
        kept = list(self.rows)
        for old, new in moved.items():
            kept[new] = self.rows[old]
        self.rows = kept[:self.batch.size]
        self._row_params = None
        self.window.count("num_removes", len(rows) + len(park))
        return handles

    def _release_if_idle(self) -> None:
        """An empty batch with nothing queued frees the buffers it kept (`_remove_rows`)."""
        if not self.rows and not len(self.scheduler) and self.batch.cap_seq:
            self.batch.release()

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
                                            arrival_step=req.arrival_step, cached_tokens=req.num_cached_tokens))
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
                          arrival_step=req.arrival_step, cached_tokens=req.num_cached_tokens)
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
                                            model=self._loaded.name, **self.prefix.stats_fields(),
                                            **self._slo_stats_fields())

    def _slo_stats_fields(self) -> dict:
        """The interactive target as the live panel shows it: the last plan's background cap, step target and
        bound on a background prefill forward between chats, and the cost model's prediction for the batch as
        it is (ms; None where there is none)."""
        plan, b = self._last_plan, self.batch
        return dict(slo_background_cap=plan.background_cap, slo_target_step_ms=plan.step_target_ms,
                    slo_forward_ms=plan.forward_ms,
                    predicted_step_ms=self.step_cost.decode_ms(b.size, b.seq_len) if b.size else None,
                    step_cost_coefficients=self.step_cost.coefficients)
