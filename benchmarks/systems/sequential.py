"""`sequential`: one request at a time with transformers `model.generate` (greedy, EOS ignored).

A request that arrives while another runs waits in a FIFO queue. Token times come from a streamer that
timestamps each decoding step. KV cache bytes: the largest `DynamicCache` a request grows, `(prompt + output)`
tokens (estimated from shapes; `DynamicCache` grows by concatenation, so transient copies are not counted).
"""

from __future__ import annotations

import time

import torch

from ..metrics import SystemRun
from ..workload import ServingRequest
from .common import RunOptions, TimingStreamer, greedy_config, kv_bytes_per_token, new_records, no_eos, \
    pad_token_id, wait_until


def _generate(loaded, prompt_ids, n: int, streamer: TimingStreamer | None = None) -> list[int]:
    ids = torch.tensor([list(prompt_ids)], device=loaded.device)  # [1, L]
    out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                                generation_config=greedy_config(n, pad_token_id(loaded)))
    return out[0, ids.shape[1]:].tolist()


@torch.inference_mode()
def run(loaded, requests: list[ServingRequest], opts: RunOptions) -> SystemRun:
    """Serve `requests` one by one in arrival order."""
    with no_eos(loaded.model):
        _generate(loaded, requests[0].prompt_ids, 2)  # warm-up, untimed
        start = time.perf_counter()
        records = new_records(requests, start)
        for req, rec in sorted(zip(requests, records), key=lambda p: p[1].arrival):
            wait_until(rec.arrival)
            streamer = TimingStreamer()
            rec.token_ids = _generate(loaded, req.prompt_ids, req.output_len, streamer)
            rec.token_times = streamer.times
    bpt = kv_bytes_per_token(loaded.model)
    return SystemRun(records, start, {
        "kv_cache_bytes": max(len(r.prompt_ids) + r.output_len for r in requests) * bpt,
        "kv_cache_note": "largest single-request DynamicCache, estimated from shapes",
        "idle_fraction": 0.0, "idle_note": "one request at a time: nothing waits inside a batch",
        "kv_padding_fraction": 0.0, "kv_padding_note": "batch of one: no padding",
    })
