"""Ragged decode attention over the batch's left-padded KV cache.

In the running batch every row is right-aligned in a window of S columns, so a row with a short context still
has S - length columns of padding in front of it. A decode step's attention reads K/V over the whole window
for every row; when one long prompt shares the batch with short ones, that padding dominates the step (on a
2-core CPU with SmolLM2-135M, batch 32: 134 ms/step at S=232, 308 ms at S=3202, of which attention 215 ms).

This module removes most of that idle work: rows are grouped by context length, and each group attends over
only the last `w` columns of the window (`w` = the longest row of the group), so padding read is bounded by
the group's own spread. Results are scattered back in row order. Masked columns contribute exactly zero to
attention, so skipping them changes only float summation order (the batch tests bound logit differences at
1e-4 against solo forwards).

The same attention function runs packed prefills: several newcomers' prompts concatenated into one
`[1, sum(L)]` forward (so the linear layers run one larger matrix multiply instead of one per prompt), with a
causal SDPA call per prompt over its own keys only, so no prompt attends to another and no padding is
computed (the "selective batching" of Orca, Yu et al. OSDI '22, applied to prefill only: decoding rows still
never share a forward with a prompt, as BATON §4 prescribes).

It plugs into transformers through `AttentionInterface` (transformers docs, "Attention interface"): the model
runs with `attn_implementation="baton"`, which is plain SDPA except during a decode step that passes
`baton_row_groups=...` or a packed prefill that passes `baton_segments=...` to the forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

ATTN_IMPLEMENTATION = "baton"
ROW_GROUPS_KWARG = "baton_row_groups"
SEGMENTS_KWARG = "baton_segments"
STATIC_KWARG = "baton_static"  # True: a static decode step over the buffers' whole width (`static_step.py`)
_MIN_SAVED_CELLS = 16_384  # below this many row x column cells saved, one SDPA call is cheaper


@dataclass(frozen=True)
class RowGroups:
    """Rows of one decode step split by context length.

    Attributes:
        groups: `(rows [g] int64 on the device, w)` pairs: the rows of a group attend over the last `w`
            columns of the step's K/V window (`w` = the group's longest context including the new token).
    """

    groups: tuple[tuple[torch.Tensor, int], ...]


@dataclass(frozen=True)
class PackedSegments:
    """Prompts packed into one prefill forward.

    Attributes:
        spans: `(start, length)` per prompt, in tokens along the packed sequence (contiguous, in order).
    """

    spans: tuple[tuple[int, int], ...]


def plan_row_groups(lengths: list[int], device: torch.device) -> RowGroups | None:
    """Group rows so that no group wastes more than half its cells on padding.

    Args:
        lengths: cached tokens per row before the step (the step adds one to each).
        device: where the row index tensors go.
    Returns:
        The grouping, or None when a single SDPA call over the whole window is about as cheap
        (one group, or fewer than `_MIN_SAVED_CELLS` cells or half the cells saved).
    """
    if len(lengths) < 2:
        return None
    order = sorted(range(len(lengths)), key=lambda r: -lengths[r])
    groups: list[tuple[list[int], int]] = [([order[0]], lengths[order[0]] + 1)]
    for r in order[1:]:
        n = lengths[r] + 1
        if 2 * n < groups[-1][1]:
            groups.append(([r], n))
        else:
            groups[-1][0].append(r)
    whole = len(lengths) * (max(lengths) + 1)
    grouped = sum(len(rows) * w for rows, w in groups)
    if len(groups) == 1 or whole - grouped < max(_MIN_SAVED_CELLS, whole // 2):
        return None
    return RowGroups(tuple((torch.tensor(rows, dtype=torch.long, device=device), w) for rows, w in groups))


def baton_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention function: SDPA, or per-group SDPA when `baton_row_groups` is given.

    Args:
        query: `[B, heads, q_len, head_dim]`.
        key, value: `[B, kv_heads, S+1, head_dim]` (views of the batch cache during decode).
        attention_mask: `[B, 1, q_len, S+1]` bool (True = attend) or None.
    Returns:
        attention output `[B, q_len, heads, head_dim]` and None (no attention weights).
    """
    if kwargs.pop(STATIC_KWARG, False):
        return _static_decode_attention(query, key, value, attention_mask, kwargs.get("scaling"))
    segments: PackedSegments | None = kwargs.pop(SEGMENTS_KWARG, None)
    if segments is not None:
        return _packed_prefill_attention(module, query, key, value, segments, **kwargs)
    groups: RowGroups | None = kwargs.pop(ROW_GROUPS_KWARG, None)
    if groups is None or query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    B, H, _, D = query.shape
    out = query.new_empty(B, 1, H, D)  # [B, 1, H, D] as sdpa_attention_forward returns it
    for rows, w in groups.groups:
        if rows.numel() == 1:  # a lone (long) row: a view, no copy
            r = slice(int(rows[0]), int(rows[0]) + 1)
            k, v, m, q = key[r, :, -w:], value[r, :, -w:], attention_mask[r, ..., -w:], query[r]
        else:
            k = key[:, :, -w:].index_select(0, rows)  # [g, KVH, w, D]
            v = value[:, :, -w:].index_select(0, rows)
            m = attention_mask[..., -w:].index_select(0, rows)  # [g, 1, 1, w]
            q = query.index_select(0, rows)
        o, _ = sdpa_attention_forward(module, q, k, v, m, **kwargs)
        out.index_copy_(0, rows, o)
    return out, None


def _static_decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                             scaling: float | None) -> tuple[torch.Tensor, None]:
    """One SDPA call for a static decode step (`static_step.py`), the same under `torch.compile` as eagerly.

    The query is packed by K/V head (transformers' `pack_gqa`: `[B, heads, 1, D]` -> `[B, kv_heads, n_rep, D]`,
    exactly what transformers does eagerly for one query token), so K/V are never repeated per query head:
    under dynamo transformers' own SDPA path skips `pack_gqa` and calls `repeat_kv`, a copy of the whole window
    per layer per step (7x slower on CPU, `docs/benchmarks.md`).

    Args:
        query: `[B, heads, 1, head_dim]`.
        key, value: `[B, kv_heads, T, head_dim]`, the buffers' whole width.
        mask: `[B, 1, 1, T]` bool (True = attend), at least one True per row.
        scaling: the softmax scale (None: 1/sqrt(head_dim)).
    Returns:
        attention output `[B, 1, heads, head_dim]` and None.
    """
    B, H, _, D = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(B, kv_heads, H // kv_heads, D)  # [B, KVH, n_rep, D]; the mask broadcasts over n_rep
    out = torch.nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(B, H, 1, D).transpose(1, 2).contiguous(), None


def _packed_prefill_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              segments: PackedSegments, **kwargs) -> tuple[torch.Tensor, None]:
    """Causal attention of each packed prompt over its own keys.

    query `[1, heads, N, head_dim]`, key/value `[1, kv_heads, N, head_dim]` (the forward's own K/V: a fresh
    cache). Returns `[1, N, heads, head_dim]`.
    """
    kwargs.pop("is_causal", None)
    _, H, N, D = query.shape
    out = query.new_empty(1, N, H, D)
    for s, L in segments.spans:
        o, _ = sdpa_attention_forward(module, query[:, :, s:s + L], key[:, :, s:s + L], value[:, :, s:s + L], None,
                                      is_causal=True, **kwargs)
        out[:, s:s + L] = o
    return out, None


def register() -> str:
    """Register the `baton` attention (and its mask builder, SDPA's) with transformers; returns its name."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, baton_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION
