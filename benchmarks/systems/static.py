"""`static`: run-to-completion batches with transformers `model.generate` and left padding.

Batching rule: requests are grouped in arrival order. Whenever the server is idle it starts a batch with the
requests that have arrived, up to `batch_size` of them; it never waits to fill a batch (with all arrivals at
t=0 every batch but the last is full). If none has arrived it waits for the next arrival. A batch runs
`max(output_len)` decoding steps, so it lasts as long as its slowest member; each request's stream ends at
its own `output_len`-th token (later tokens of that row are computed and thrown away).

Prompts are left-padded with the EOS id (pad = eos) to the longest prompt, with an attention mask, so
positions and greedy tokens match an unpadded run. KV padding fraction: per decoding step, the share of the
batch's `[B, L_max + t]` cache that is not a live token of an unfinished request (left padding plus the rows
already past their length), averaged over the steps of all batches.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from ..metrics import RequestRecord, SystemRun
from ..workload import ServingRequest
from .common import RunOptions, TimingStreamer, greedy_config, kv_bytes_per_token, new_records, no_eos, \
    pad_token_id, wait_until


def _run_batch(loaded, batch: list[ServingRequest]) -> tuple[list[list[int]], list[float]]:
    """One left-padded `generate` over `batch`; returns each row's tokens (all steps) and the step times."""
    pad = pad_token_id(loaded)
    L = max(len(r.prompt_ids) for r in batch)
    ids = torch.full((len(batch), L), pad, dtype=torch.long)  # [B, L] left-padded
    mask = torch.zeros((len(batch), L), dtype=torch.long)
    for i, r in enumerate(batch):
        ids[i, L - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
        mask[i, L - len(r.prompt_ids):] = 1
    streamer = TimingStreamer()
    out = loaded.model.generate(ids.to(loaded.device), attention_mask=mask.to(loaded.device), streamer=streamer,
                                generation_config=greedy_config(max(r.output_len for r in batch), pad))
    return out[:, L:].tolist(), streamer.times


def _padding_cells(batch: list[ServingRequest]) -> tuple[int, int]:
    """(padding cells, all cells) of the batch's KV cache summed over its decoding steps."""
    L = max(len(r.prompt_ids) for r in batch)
    pad = cells = 0
    for t in range(1, max(r.output_len for r in batch) + 1):
        live = sum(len(r.prompt_ids) + min(t, r.output_len) for r in batch)
        cells += len(batch) * (L + t)
        pad += len(batch) * (L + t) - live
    return pad, cells


@torch.inference_mode()
def run(loaded, requests: list[ServingRequest], opts: RunOptions) -> SystemRun:
    """Serve `requests` in static batches of up to `opts.batch_size`."""
    order = sorted(range(len(requests)), key=lambda i: (requests[i].arrival_s, i))
    pad_cells = all_cells = peak_tokens = 0
    with no_eos(loaded.model):
        warm = dataclasses.replace(requests[order[0]], output_len=2)
        _run_batch(loaded, [warm] * min(2, opts.batch_size))  # warm-up, untimed
        start = time.perf_counter()
        records = new_records(requests, start)
        pos = 0
        while pos < len(order):
            wait_until(records[order[pos]].arrival)
            now = time.perf_counter()
            take = [order[pos]]
            while len(take) < opts.batch_size and pos + len(take) < len(order) \
                    and records[order[pos + len(take)]].arrival <= now:
                take.append(order[pos + len(take)])
            pos += len(take)
            batch = [requests[i] for i in take]
            tokens, times = _run_batch(loaded, batch)
            for i, row in zip(take, tokens):
                _fill(records[i], row, times, requests[i].output_len)
            p, c = _padding_cells(batch)
            pad_cells, all_cells = pad_cells + p, all_cells + c
            peak_tokens = max(peak_tokens, len(batch) * (max(len(r.prompt_ids) for r in batch)
                                                          + max(r.output_len for r in batch)))
    return SystemRun(records, start, {
        "kv_cache_bytes": peak_tokens * kv_bytes_per_token(loaded.model),
        "kv_cache_note": "largest padded batch cache [B, L_max + n_max], estimated from shapes",
        "idle_fraction": None,
        "idle_note": "no prefill joins a running batch; the cost shows as queueing and as padding",
        "kv_padding_fraction": pad_cells / all_cells if all_cells else 0.0,
        "kv_padding_note": "left padding + rows past their length, share of [B, L_max + t] cells per step",
    })


def _fill(rec: RequestRecord, row: list[int], times: list[float], n: int) -> None:
    rec.token_ids = row[:n]
    rec.token_times = times[:n]
