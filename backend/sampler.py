"""Vectorised next-token sampling for all rows of a step, with per-row parameters.

One call handles a whole batch: greedy rows take the argmax of the raw logits; sampled rows apply their own
temperature, top-k and top-p (vLLM semantics: `top_k` in {0, -1} and `top_p == 1` disable the filters; top-p
keeps the smallest set of most likely tokens whose mass reaches p, always at least one), then draw by
inverse CDF with one uniform number per row. Each row's uniform comes from its request's own seeded
`torch.Generator` (or the engine's), so a seeded request is reproducible alone or inside any batch: what a
request draws never depends on its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import SamplingParams


@dataclass
class SamplingTensors:
    """Per-row sampling parameters laid out for one batch (rebuilt when rows join, leave or move).

    Attributes:
        temperature: `[B]` float32; 1.0 on greedy rows (unused there).
        top_p: `[B]` float32.
        top_k: `[B]` int64, 0 = disabled.
        greedy: `[B]` bool.
        all_greedy: every row is greedy (skips all sampling work).
        needs_filter: some row uses top-k or top-p (needs the sort).
    """

    temperature: torch.Tensor
    top_p: torch.Tensor
    top_k: torch.Tensor
    greedy: torch.Tensor
    all_greedy: bool
    needs_filter: bool

    @classmethod
    def build(cls, params: list[SamplingParams], device: torch.device) -> "SamplingTensors":
        """Lay out `params` (one per row, in row order) as tensors on `device`."""
        greedy = [p.greedy for p in params]
        return cls(
            temperature=torch.tensor([1.0 if g else p.temperature for p, g in zip(params, greedy)],
                                     dtype=torch.float32, device=device),
            top_p=torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device),
            top_k=torch.tensor([max(p.top_k, 0) for p in params], dtype=torch.long, device=device),
            greedy=torch.tensor(greedy, dtype=torch.bool, device=device),
            all_greedy=all(greedy),
            needs_filter=any(not g and (p.top_k > 0 or p.top_p < 1) for p, g in zip(params, greedy)),
        )


def draw_uniforms(generators: list[torch.Generator | None], default: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    """One uniform in [0, 1) per row, from the row's own generator (or `default`). Returns `[B]` float32."""
    u = torch.empty(len(generators), dtype=torch.float64)
    for i, g in enumerate(generators):
        u[i] = torch.rand((), generator=g or default, dtype=torch.float64)
    return u.to(device=device, dtype=torch.float32)


def filtered_logits(logits: torch.Tensor, st: SamplingTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature-scale and apply top-k/top-p. Excluded tokens get -inf.

    Args:
        logits: `[B, V]` float32.
    Returns:
        (scaled logits sorted descending `[B, V]`, their token ids `[B, V]`) when a filter is active,
        else (scaled logits `[B, V]`, identity ids `[B, V]` broadcast view).
    """
    B, V = logits.shape
    scaled = logits / st.temperature[:, None]
    if not st.needs_filter:
        ids = torch.arange(V, device=logits.device).expand(B, V)
        return scaled, ids
    sorted_logits, sorted_ids = scaled.sort(dim=-1, descending=True)
    rank = torch.arange(V, device=logits.device)[None, :]
    k = torch.where(st.top_k > 0, st.top_k, V)[:, None]
    sorted_logits = sorted_logits.masked_fill(rank >= k, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of strictly more likely tokens
    sorted_logits = sorted_logits.masked_fill((mass_before >= st.top_p[:, None]) & (rank > 0), float("-inf"))
    return sorted_logits, sorted_ids


def sample(logits: torch.Tensor, st: SamplingTensors, uniforms: torch.Tensor | None) -> torch.Tensor:
    """Pick the next token of every row.

    Args:
        logits: `[B, V]` (any float dtype; computed in float32).
        st: per-row parameters.
        uniforms: `[B]` float32 in [0, 1), one per row (`draw_uniforms`); None when `st.all_greedy`.
    Returns:
        next token ids `[B]` int64.
    """
    logits = logits.float()
    greedy_ids = logits.argmax(dim=-1)
    if st.all_greedy:
        return greedy_ids
    scaled, ids = filtered_logits(logits, st)
    cdf = scaled.softmax(dim=-1).cumsum(dim=-1)  # [B, V]
    target = (uniforms * cdf[:, -1])[:, None]
    pick = torch.searchsorted(cdf, target, right=True)  # [B, 1]
    # Round-off can push `target` onto the flat tail of the CDF; excluded tokens form a suffix when sorted.
    n_kept = torch.isfinite(scaled).sum(dim=-1, keepdim=True)
    pick = torch.minimum(pick, n_kept - 1)
    sampled = ids.gather(1, pick)[:, 0]
    return torch.where(st.greedy, greedy_ids, sampled)
