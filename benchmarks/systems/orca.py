"""`orca` and `orca-packed`: iteration-level scheduling with the newcomers' prefill INSIDE the batch's iteration.

Each iteration admits the requests that have arrived (FIFO, while rows are free and their prompts fit
`max_prefill_tokens`, at least one), then runs ONE forward in which every running row brings its next token
and every newcomer its whole prompt; the last position of each row gives its next token (greedy). Finished
rows leave at once. The KV cache is `OrcaKV` (per-row, left-aligned, written in place).

- `orca` (padded): the forward is `[rows, T]` with `T` the longest newcomer prompt (1 when none joined). Each
  row's new tokens are right-aligned; the other positions are padding (the EOS id) whose queries attend only
  to column 0 and whose K/V are dropped. A running row thus computes `T - 1` padding positions in every
  iteration a prompt joins: the idle computation BATON (arXiv 2410.18701 §3) sets out to remove.
- `orca-packed` (no padding, Orca's selective batching): all new tokens go in one `[1, sum(q)]` forward, so
  the linear layers see no padding; attention is split per request: one SDPA call for all running rows (one
  query each, over their own columns) and one causal SDPA call per newcomer over its own prompt. Running rows
  still wait for the newcomers' prompt tokens inside the shared forward.

`idle_fraction` (decode-row time spent on others' prefill): padded: sum over iterations of
`time x running rows x (T - 1) / T` over sum of `time x running rows`; packed: the same with the prompt
tokens' share `P / (P + running rows)` of a mixed forward in place of `(T - 1) / T`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ..metrics import SystemRun
from ..workload import ServingRequest
from .common import RunOptions, attention_implementation, new_records, pad_token_id, wait_until
from .orca_kv import OrcaKV

PACKED_ATTENTION = "orca_packed"
PLAN_KWARG = "orca_plan"


@dataclass(frozen=True)
class _PackedPlan:
    """Rows 0..R-1 are running (one query each, at flat positions 0..R-1); then one prompt per newcomer."""

    running: int
    decode_width: int
    decode_mask: torch.Tensor | None  # [R, 1, 1, decode_width] bool
    prefills: tuple[tuple[int, int, int], ...]  # (row, flat start, prompt length)


def packed_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention split per request over a packed `[1, N]` forward (registered as `orca_packed`).

    query `[1, heads, N, head_dim]`; key/value the cache view `[rows, kv_heads, width, head_dim]`.
    Returns `[1, N, heads, head_dim]`.
    """
    plan: _PackedPlan = kwargs.pop(PLAN_KWARG)
    kwargs.pop("is_causal", None)
    _, H, N, D = query.shape
    out = query.new_empty(1, N, H, D)
    R = plan.running
    if R:
        q = query[0, :, :R].transpose(0, 1).unsqueeze(2)  # [R, H, 1, D]
        k, v = key[:R, :, :plan.decode_width], value[:R, :, :plan.decode_width]
        o, _ = sdpa_attention_forward(module, q, k, v, plan.decode_mask, is_causal=False, **kwargs)
        out[0, :R] = o[:, 0]  # [R, H, D]
    for row, s, L in plan.prefills:
        q = query[:, :, s:s + L]  # [1, H, L, D]
        o, _ = sdpa_attention_forward(module, q, key[row:row + 1, :, :L], value[row:row + 1, :, :L], None,
                                      is_causal=True, **kwargs)
        out[0, s:s + L] = o[0]
    return out, None


def _forward_padded(model, kv: OrcaKV, new_tokens: list[list[int]], pad: int, device) -> list[int]:
    """One `[rows, T]` forward; rows' new tokens right-aligned. Returns each row's next token."""
    B, T = len(new_tokens), max(len(t) for t in new_tokens)
    ids = torch.full((B, T), pad, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)  # padding positions: 0, and they attend to column 0 only
    src_b, src_t, dst_c = [], [], []
    for r, toks in enumerate(new_tokens):
        q, n = len(toks), kv.lengths[r]
        ids[r, T - q:] = torch.tensor(toks)
        pos[r, T - q:] = torch.arange(n, n + q)
        src_b += [r] * q
        src_t += range(T - q, T)
        dst_c += range(n, n + q)
    kv.plan_write(src_b, src_t, src_b, dst_c)
    limit = pos.to(device)  # query (r, t) sees columns 0..pos[r, t]: its row's cache and new tokens up to itself
    mask = torch.arange(kv.width, device=device)[None, None, :] <= limit[:, :, None]  # [B, T, W]
    out = model(input_ids=ids.to(device), position_ids=pos.to(device), attention_mask=mask[:, None],
                past_key_values=kv.cache, use_cache=True, logits_to_keep=1)
    kv.commit([len(t) for t in new_tokens])
    return out.logits[:, -1].argmax(-1).tolist()


def _forward_packed(model, kv: OrcaKV, new_tokens: list[list[int]], running: int, device) -> list[int]:
    """One `[1, sum(q)]` forward with attention split per request. Returns each row's next token."""
    flat, pos, dst_r, dst_c, last, prefills = [], [], [], [], [], []
    for r, toks in enumerate(new_tokens):
        n, s = kv.lengths[r], len(flat)
        if r >= running:
            prefills.append((r, s, len(toks)))
        flat += toks
        pos += range(n, n + len(toks))
        dst_r += [r] * len(toks)
        dst_c += range(n, n + len(toks))
        last.append(len(flat) - 1)
    kv.plan_write([0] * len(flat), list(range(len(flat))), dst_r, dst_c)
    width = max(kv.lengths[:running], default=0) + 1
    mask = None
    if running:
        lens = torch.tensor(kv.lengths[:running]) + 1
        mask = (torch.arange(width)[None, :] < lens[:, None])[:, None, None, :].to(device)  # [R, 1, 1, W]
    plan = _PackedPlan(running, width, mask, tuple(prefills))
    out = model(input_ids=torch.tensor([flat], device=device), position_ids=torch.tensor([pos], device=device),
                past_key_values=kv.cache, use_cache=True, logits_to_keep=torch.tensor(last, device=device),
                **{PLAN_KWARG: plan})
    kv.commit([len(t) for t in new_tokens])
    return out.logits[0].argmax(-1).tolist()


@dataclass
class _Account:
    """Per-iteration bookkeeping for the idle and padding measurements."""

    packed: bool
    idle_row_s: float = 0.0
    row_s: float = 0.0
    iterations: int = 0
    mixed: int = 0
    pad_cells: int = 0
    all_cells: int = 0
    kv_padding_sum: float = 0.0

    def add(self, seconds: float, toks: list[list[int]], running: int, kv_padding: float) -> None:
        R, T, P = running, max(len(t) for t in toks), sum(len(t) for t in toks[running:])
        share = (P / (P + R) if self.packed else (T - 1) / T) if P else 0.0
        self.idle_row_s += seconds * R * share
        self.row_s += seconds * R
        self.iterations += 1
        self.mixed += bool(P and R)
        self.pad_cells += len(toks) * T - (R + P)
        self.all_cells += len(toks) * T
        self.kv_padding_sum += kv_padding

    def extra(self, kv: OrcaKV) -> dict:
        return {
            "kv_cache_bytes": kv.peak_bytes, "kv_cache_note": "peak capacity of the per-row KV buffers",
            "idle_fraction": self.idle_row_s / self.row_s if self.row_s else 0.0,
            "idle_note": ("running rows' share of mixed forwards spent on prompt tokens, P/(P+R)" if self.packed
                          else "running rows' padded positions in mixed [rows, T] forwards, (T-1)/T"),
            "kv_padding_fraction": self.kv_padding_sum / self.iterations if self.iterations else 0.0,
            "kv_padding_note": "per-row left-aligned buffers: 1 - sum(len) / (rows x max(len)), per iteration",
            "input_padding_fraction": None if self.packed else self.pad_cells / max(1, self.all_cells),
            "num_iterations": self.iterations, "num_mixed_iterations": self.mixed,
        }


@torch.inference_mode()
def _serve(loaded, requests: list[ServingRequest], opts: RunOptions, packed: bool) -> SystemRun:
    model, device, pad = loaded.model, loaded.device, pad_token_id(loaded)
    kv = OrcaKV(model, device, opts.batch_size)

    def step(toks: list[list[int]], running: int) -> list[int]:
        if packed:
            return _forward_packed(model, kv, toks, running, device)
        return _forward_padded(model, kv, toks, pad, device)

    order = deque(sorted(range(len(requests)), key=lambda i: (requests[i].arrival_s, i)))
    kv.add_row()
    step([list(requests[order[0]].prompt_ids)], 0)  # warm-up, untimed
    kv.remove(0)
    start = time.perf_counter()
    records = new_records(requests, start)
    rows: list[int] = []  # request index of each cache row (running rows first, newcomers appended)
    account = _Account(packed)
    while order or rows:
        if not rows:
            wait_until(records[order[0]].arrival)
        new = _admit(order, records, requests, len(rows), opts)
        toks = [[records[i].token_ids[-1]] for i in rows] + [list(requests[i].prompt_ids) for i in new]
        for _ in new:
            kv.add_row()
        t0 = time.perf_counter()
        nxt = step(toks, len(rows))
        t1 = time.perf_counter()
        account.add(t1 - t0, toks, len(rows), kv.padding_fraction)
        rows += new
        for i, tok in zip(rows, nxt):
            records[i].token_ids.append(tok)
            records[i].token_times.append(t1)
        for r in reversed(range(len(rows))):  # finished rows leave; the last row moves into the slot
            if len(records[rows[r]].token_ids) >= requests[rows[r]].output_len:
                kv.remove(r)
                rows[r] = rows[-1]
                rows.pop()
    return SystemRun(records, start, account.extra(kv))


def _admit(order: deque, records, requests, running: int, opts: RunOptions) -> list[int]:
    """Arrived requests (FIFO) while rows are free and their prompts fit the per-iteration token budget."""
    new, spent, now = [], 0, time.perf_counter()
    while order and records[order[0]].arrival <= now and running + len(new) < opts.batch_size:
        L = len(requests[order[0]].prompt_ids)
        if new and spent + L > opts.max_prefill_tokens:
            break
        spent += L
        new.append(order.popleft())
    return new


def run_padded(loaded, requests: list[ServingRequest], opts: RunOptions) -> SystemRun:
    """`orca`: padded `[rows, longest new prompt]` iterations."""
    return _serve(loaded, requests, opts, packed=False)


def run_packed(loaded, requests: list[ServingRequest], opts: RunOptions) -> SystemRun:
    """`orca-packed`: packed `[1, all new tokens]` iterations with per-request attention."""
    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    with attention_implementation(loaded.model, PACKED_ATTENTION):
        return _serve(loaded, requests, opts, packed=True)
