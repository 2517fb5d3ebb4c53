"""`hf-cb`: transformers' own continuous batching (`ContinuousBatchingManager`, transformers 5.23).

The manager runs its own thread: a paged KV cache, a FIFO scheduler with chunked prefill, and packed
("varlen") forwards that mix prompt chunks and decode tokens without padding. Requests go in with
`add_request` at their arrival times (online arrivals work), greedy (`do_sample=False`), EOS off
(`eos_token_id=-1`), `record_timestamps=True` for per-token times (`perf_counter`, the clock every system uses).

Settings that differ from its defaults, so that it is sized like the others and fits a shared machine:
- `num_blocks`: room for `batch_size` requests of the workload's longest prompt + output (pages of 256
  tokens) above the scheduler's 15% free-block safety margin, instead of a share of free memory (60% of RAM
  on a CPU);
- `max_requests_per_batch = batch_size`, `max_batch_tokens = max_prefill_tokens` (tokens per forward);
- `allow_block_sharing=False`: no prefix caching (the others recompute every prompt; ShareGPT prompts share
  the chat template's prefix);
- `auto_switch_to_flash=False`: the same attention kernel (SDPA) as the others.
"""

from __future__ import annotations

import math
import time

from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from ..metrics import SystemRun
from ..workload import ServingRequest
from .common import RunOptions, new_records, pad_token_id, wait_until

PAGE_SIZE = 256
SAFETY_MARGIN = 0.15  # the FIFO scheduler's default: it stops admitting prefills below this share of free blocks


def _manager(loaded, requests: list[ServingRequest], opts: RunOptions):
    longest = max(len(r.prompt_ids) + r.output_len for r in requests)
    blocks = math.ceil(opts.batch_size * math.ceil(longest / PAGE_SIZE) / (1 - SAFETY_MARGIN)) + 1
    cbc = ContinuousBatchingConfig(
        page_size=PAGE_SIZE, num_blocks=blocks, safety_margin=SAFETY_MARGIN,
        max_requests_per_batch=opts.batch_size, max_batch_tokens=opts.max_prefill_tokens,
        allow_block_sharing=False, auto_switch_to_flash=False)
    gc = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=pad_token_id(loaded),
                          max_new_tokens=max(r.output_len for r in requests))
    return loaded.model.init_continuous_batching(generation_config=gc, continuous_batching_config=cbc)


def _wait(manager, ids: set[str], timeout_s: float) -> dict:
    """Collect the finished outputs of `ids` (raises if the manager stops or stalls)."""
    done = {}
    while len(done) < len(ids):
        out = manager.get_result(timeout=timeout_s)
        if out is None:
            raise RuntimeError(f"hf-cb: the manager stopped or gave no result for {timeout_s} s "
                               f"({len(done)}/{len(ids)} done)")
        if out.request_id in ids and out.is_finished():
            if out.error is not None:
                raise RuntimeError(f"hf-cb: request {out.request_id} failed: {out.error}")
            done[out.request_id] = out
    return done


def run(loaded, requests: list[ServingRequest], opts: RunOptions, timeout_s: float = 600.0) -> SystemRun:
    """Serve `requests` through a `ContinuousBatchingManager`, each added at its arrival time."""
    manager = _manager(loaded, requests, opts)
    manager.warmup()
    manager.start()
    try:
        first = requests[0]
        manager.add_request(list(first.prompt_ids), request_id="warmup", max_new_tokens=2, eos_token_id=-1)
        _wait(manager, {"warmup"}, timeout_s)  # untimed
        start = time.perf_counter()
        records = new_records(requests, start)
        for req, rec in sorted(zip(requests, records), key=lambda p: p[1].arrival):
            wait_until(rec.arrival)
            manager.add_request(list(req.prompt_ids), request_id=f"r{req.index}", max_new_tokens=req.output_len,
                                record_timestamps=True, eos_token_id=-1)
        outs = _wait(manager, {f"r{r.index}" for r in requests}, timeout_s)
        cache = manager.batch_processor.cache if manager.batch_processor is not None else None
        kv_bytes = cache.cache_tensor.numel() * cache.cache_tensor.element_size() if cache is not None else None
    finally:
        manager.stop(block=True, timeout=30)
        manager.destroy()
    for req, rec in zip(requests, records):
        out = outs[f"r{req.index}"]
        rec.token_ids, rec.token_times = list(out.generated_tokens), list(out.timestamps or [])
    return SystemRun(records, start, {
        "kv_cache_bytes": kv_bytes, "kv_cache_note": "the manager's paged cache tensor (allocated bytes)",
        "idle_fraction": None, "idle_note": "not observable from outside the manager",
        "kv_padding_fraction": None, "kv_padding_note": "paged cache: no padding (partly filled last pages only)",
    })
