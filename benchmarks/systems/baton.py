"""`baton`: our engine (`backend.Engine`), requests sent with `engine.generate` at their arrival times.

Token times are taken as the outputs arrive in the caller's event loop. Newcomers are prefilled apart from the
running rows (those admitted in the same iteration together, in one packed forward) and their K/V embedded
into the running batch (BATON §4); decode steps run over `[rows, 1]`.

BATON's own measurements come from timing the engine's model runner (`Engine._core.runner.prefill_packed` /
`.decode` wrapped after start; the engine has no public per-step hook yet):
- `idle_fraction`: sum over prefills of `prefill time x rows already running` / (that + sum over decode
  steps of `step time x rows`): the share of decode-row time spent waiting through someone else's prefill
  (model forward times only: sampling and the K/V embedding copy are outside both sums);
- `kv_padding_fraction`: the batch's `padding_fraction` sampled before every decode step, averaged;
- `kv_cache_bytes`: the largest `kv_cache_bytes` (`RunningBatch.capacity_bytes`) seen at a decode step;
- `decode_steps`: per decode step `[seconds, KV bytes its attention read, live KV bytes]` (on CUDA the step is
  synchronised before it is timed), which `benchmarks.serving` turns into the roofline report
  (`benchmarks/roofline.py`) and then drops from the JSON.
"""

from __future__ import annotations

import asyncio
import time

import torch

from backend import Engine, EngineConfig, SamplingParams
from backend.attention import plan_row_groups

from ..metrics import RequestRecord, SystemRun
from ..workload import ServingRequest
from .common import RunOptions, new_records


class _Probe:
    """Times the engine runner's prefill and decode calls (runs on the engine thread)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.prefill_row_s = self.decode_row_s = 0.0
        self.padding: list[float] = []
        self.peak_kv_bytes = 0
        self.steps: list[tuple[float, int, int]] = []
        self.base: dict = {}
        runner = engine._core.runner
        prefill, decode = runner.prefill_packed, runner.decode

        def timed_prefill(prompts):
            rows, t0 = engine._core.batch.size, time.perf_counter()
            try:
                return prefill(prompts)
            finally:
                self.prefill_row_s += (time.perf_counter() - t0) * rows

        cuda = runner.device.type == "cuda"

        def timed_decode(batch, input_ids):
            self.padding.append(batch.padding_fraction)
            self.peak_kv_bytes = max(self.peak_kv_bytes, batch.capacity_bytes)
            kv_read, kv_live = _kv_bytes_read(batch, runner.ragged)
            rows, t0 = batch.size, time.perf_counter()
            try:
                logits = decode(batch, input_ids)
                if cuda:
                    torch.cuda.synchronize(runner.device)
                return logits
            finally:
                seconds = time.perf_counter() - t0
                self.decode_row_s += seconds * rows
                self.steps.append((seconds, kv_read, kv_live))

        runner.prefill_packed, runner.decode = timed_prefill, timed_decode

    def reset(self) -> None:
        """Forget the warm-up: wait until its iteration is published, then zero the sums and take counters."""
        self.settle(1)
        self.base = dict(self.engine.stats().counters)
        self.prefill_row_s = self.decode_row_s = 0.0
        self.padding, self.peak_kv_bytes, self.steps = [], 0, []

    def settle(self, finished: int, timeout_s: float = 5.0) -> None:
        """Wait until the published stats count `finished` finished requests (the last iteration is in)."""
        deadline = time.perf_counter() + timeout_s
        while self.engine.stats().counters.get("num_requests_finished", 0) < finished \
                and time.perf_counter() < deadline:
            time.sleep(0.001)

    def extra(self, num_requests: int) -> dict:
        self.settle(self.base.get("num_requests_finished", 0) + num_requests)
        row_s = self.prefill_row_s + self.decode_row_s
        stats = self.engine.stats()
        return {
            "kv_cache_bytes": self.peak_kv_bytes,
            "kv_cache_note": "largest RunningBatch capacity (EngineStats.kv_cache_bytes) seen at a decode step",
            "idle_fraction": self.prefill_row_s / row_s if row_s else 0.0,
            "idle_note": "prefill forward time x rows already running, over that plus decode forward time x rows",
            "kv_padding_fraction": sum(self.padding) / len(self.padding) if self.padding else 0.0,
            "kv_padding_note": "RunningBatch.padding_fraction before each decode step, averaged",
            "decode_steps": [list(step) for step in self.steps],
            "counters": {k: v - self.base.get(k, 0) for k, v in stats.counters.items()
                         if k.startswith("num_") or k.endswith("_seconds")},
        }


def _kv_bytes_read(batch, ragged: bool) -> tuple[int, int]:
    """K/V bytes the next decode step's attention reads (padded window, or its ragged row groups) and the live
    part of them (each row's own tokens plus the new one)."""
    B, S, per_token = batch.size, batch.seq_len, batch.bytes_per_token
    groups = plan_row_groups(batch.lengths, torch.device("cpu")) if ragged else None
    cells = B * (S + 1) if groups is None else sum(rows.numel() * w for rows, w in groups.groups)
    return cells * per_token, (sum(batch.lengths) + B) * per_token


async def _one(engine: Engine, req: ServingRequest, rec: RequestRecord) -> None:
    await asyncio.sleep(max(0.0, rec.arrival - time.perf_counter()))
    params = SamplingParams(max_tokens=req.output_len, temperature=0, ignore_eos=True)
    async for out in engine.generate(list(req.prompt_ids), params):
        if out.error is not None:
            raise RuntimeError(f"baton: request {req.index} failed: {out.error}")
        if out.token_id is not None:
            rec.token_ids.append(out.token_id)
            rec.token_times.append(time.perf_counter())


async def _serve(engine: Engine, requests: list[ServingRequest]) -> tuple[list[RequestRecord], float]:
    start = time.perf_counter()
    records = new_records(requests, start)
    await asyncio.gather(*(_one(engine, q, r) for q, r in zip(requests, records)))
    return records, start


def run(loaded, requests: list[ServingRequest], opts: RunOptions, prefix_cache_bytes: int | None = None) -> SystemRun:
    """Serve `requests` through one `Engine` over the shared model (prefix cache at its default size)."""
    config = EngineConfig(model=loaded.name, max_batch_size=opts.batch_size,
                          max_prefill_tokens=opts.max_prefill_tokens, prefix_cache_bytes=prefix_cache_bytes)
    with Engine(config, loaded=loaded) as engine:
        probe = _Probe(engine)
        warm = list(reversed(requests[0].prompt_ids))  # not a workload prompt: the cache must not serve one
        engine.generate_batch([warm], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))  # warm-up
        probe.reset()
        records, start = asyncio.run(_serve(engine, requests))
        extra = probe.extra(len(requests))
    return SystemRun(records, start, extra)


def run_no_prefix_cache(loaded, requests: list[ServingRequest], opts: RunOptions) -> SystemRun:
    """`run` with the prefix cache off (`--prefix-cache 0`): what the cache costs or saves on this workload."""
    return run(loaded, requests, opts, prefix_cache_bytes=0)
