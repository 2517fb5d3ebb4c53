"""Vectorised next-token sampling for all rows of a step, with per-row parameters.

One call handles a whole batch: greedy rows take the argmax of the raw logits; sampled rows apply their own
temperature, top-k and top-p (vLLM semantics: `top_k` in {0, -1} and `top_p == 1` disable the filters; top-p
keeps the smallest set of most likely tokens whose mass reaches p, always at least one), then draw by
inverse CDF with one uniform number per row. Each row's uniform comes from its request's own seeded
`torch.Generator` (or the engine's), and each row's CDF runs over an order fixed by its own parameters alone
(vocabulary order for a row without filters, descending probability for a row with top-k / top-p), so a
seeded request is reproducible alone or inside any batch: what a request draws never depends on its
neighbours (issue #9: a neighbour's top-p used to switch every row to the sorted order).

Top-k / top-p rows need their most likely tokens in descending order. Sorting whole 49,152-token rows was the
slow part of sampling (32 rows on a 2-core CPU: 57 ms of the default model's logits, 218 ms of random ones);
the sampler takes each row's `CANDIDATES` most likely tokens with `topk` instead, which holds the whole kept
set whenever top-k is at most that many or the candidates' mass reaches top-p, and sorts the full row only for
a row where neither holds. Which way a row goes depends on its own logits and parameters only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import SamplingParams

CANDIDATES = 1024  # most likely tokens a top-k / top-p row looks at before falling back to a full sort


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
        filter_rows: `[F]` int64, the sampled rows that use top-k or top-p (only they are sorted).
        greedy_rows: `[G]` int64, the greedy rows (only they take an argmax).
        plain_rows: `[P]` int64, the sampled rows without filters (only they take a softmax over the
            vocabulary, in vocabulary order).
    """

    temperature: torch.Tensor
    top_p: torch.Tensor
    top_k: torch.Tensor
    greedy: torch.Tensor
    all_greedy: bool
    needs_filter: bool
    filter_rows: torch.Tensor
    greedy_rows: torch.Tensor
    plain_rows: torch.Tensor

    @classmethod
    def build(cls, params: list[SamplingParams], device: torch.device) -> "SamplingTensors":
        """Lay out `params` (one per row, in row order) as tensors on `device`."""
        greedy = [p.greedy for p in params]
        filtering = [i for i, (p, g) in enumerate(zip(params, greedy)) if not g and (p.top_k > 0 or p.top_p < 1)]
        plain = sorted(set(i for i, g in enumerate(greedy) if not g) - set(filtering))
        return cls(
            temperature=torch.tensor([1.0 if g else p.temperature for p, g in zip(params, greedy)],
                                     dtype=torch.float32, device=device),
            top_p=torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device),
            top_k=torch.tensor([max(p.top_k, 0) for p in params], dtype=torch.long, device=device),
            greedy=torch.tensor(greedy, dtype=torch.bool, device=device),
            all_greedy=all(greedy),
            needs_filter=bool(filtering),
            filter_rows=torch.tensor(filtering, dtype=torch.long, device=device),
            greedy_rows=torch.tensor([i for i, g in enumerate(greedy) if g], dtype=torch.long, device=device),
            plain_rows=torch.tensor(plain, dtype=torch.long, device=device),
        )


def draw_uniforms(generators: list[torch.Generator | None], default: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    """One uniform in [0, 1) per row, from the row's own generator (or `default`). Returns `[B]` float32."""
    u = torch.empty(len(generators), dtype=torch.float64)
    for i, g in enumerate(generators):
        u[i] = torch.rand((), generator=g or default, dtype=torch.float64)
    return u.to(device=device, dtype=torch.float32)


def filtered_logits(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply top-k then top-p to temperature-scaled logits, in descending order. Excluded tokens get -inf.

    Args:
        scaled: `[F, V]` float32, logits already divided by each row's temperature.
        top_k: `[F]` int64, 0 = no top-k; top_p: `[F]` float32, 1 = no top-p.
    Returns:
        (the filtered logits sorted descending `[F, V]`, their token ids `[F, V]`).
    """
    V = scaled.shape[-1]
    sorted_logits, sorted_ids = scaled.sort(dim=-1, descending=True)
    rank = torch.arange(V, device=scaled.device)[None, :]
    k = torch.where(top_k > 0, top_k, V)[:, None]
    sorted_logits = sorted_logits.masked_fill(rank >= k, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of strictly more likely tokens
    sorted_logits = sorted_logits.masked_fill((mass_before >= top_p[:, None]) & (rank > 0), float("-inf"))
    return sorted_logits, sorted_ids


def candidate_logits(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`filtered_logits` over each row's `CANDIDATES` most likely tokens only (no full sort).

    Args:
        scaled: `[F, V]` float32, logits already divided by each row's temperature.
        top_k: `[F]` int64, 0 = no top-k; top_p: `[F]` float32, 1 = no top-p.
    Returns:
        (the filtered candidate logits sorted descending `[F, C]`, their token ids `[F, C]`, and `[F]` bool:
        the row's kept set lies within its candidates, so these equal the first `C` of `filtered_logits`;
        a row where it is False must be filtered over the full sort).
    """
    V = scaled.shape[-1]
    C = min(V, CANDIDATES)
    cand, ids = scaled.topk(C, dim=-1)  # [F, C], descending
    rank = torch.arange(C, device=scaled.device)[None, :]
    k = torch.where(top_k > 0, top_k, V)[:, None]
    over_k = rank >= k
    # top-p mass as `filtered_logits` computes it: over the top-k tokens when top-k is on, else the whole row
    with_k = (top_k > 0) & (top_k <= C)
    probs = torch.where(with_k[:, None], cand.masked_fill(over_k, float("-inf")).softmax(dim=-1),
                        scaled.softmax(dim=-1).gather(1, ids))  # [F, C]
    mass_before = probs.cumsum(dim=-1) - probs
    over_p = (mass_before >= top_p[:, None]) & (rank > 0)
    excluded = over_k | over_p
    # the kept set ends inside the candidates: top-k within them, or top-p reached before the last one
    complete = with_k | ((top_k == 0) & over_p[:, -1]) | (C == V)
    return cand.masked_fill(excluded, float("-inf")), ids, complete


def _filtered_sample(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                     uniforms: torch.Tensor) -> torch.Tensor:
    """Draw for top-k / top-p rows (`[F, V]` scaled logits) along their own descending order. Returns `[F]`."""
    kept, ids, complete = candidate_logits(scaled, top_k, top_p)  # [F, C]
    picked = ids.gather(1, _inverse_cdf(kept, uniforms))[:, 0]
    if not bool(complete.all()):  # a flat row whose top-p set is wider than its candidates: sort it whole
        rest = (~complete).nonzero()[:, 0]
        kept, ids = filtered_logits(scaled[rest], top_k[rest], top_p[rest])  # [R, V]
        picked[rest] = ids.gather(1, _inverse_cdf(kept, uniforms[rest]))[:, 0]
    return picked


def _inverse_cdf(scaled: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The position each row's uniform falls at in the CDF of `softmax(scaled)` along the row's own order.

    Args:
        scaled: `[R, V]` float32 (-inf on excluded tokens, which must form a suffix when sorted).
        uniforms: `[R]` float32 in [0, 1).
    Returns:
        positions `[R, 1]` int64 into the rows of `scaled`.
    """
    cdf = scaled.softmax(dim=-1).cumsum(dim=-1)  # [R, V]
    target = (uniforms * cdf[:, -1])[:, None]
    pick = torch.searchsorted(cdf, target, right=True)  # [R, 1]
    # Round-off can push `target` onto the flat tail of the CDF; excluded tokens form a suffix when sorted.
    n_kept = torch.isfinite(scaled).sum(dim=-1, keepdim=True)
    return torch.minimum(pick, n_kept - 1)


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
    if st.all_greedy:
        return logits.argmax(dim=-1)
    # each kind of row computes only what it needs, on its own rows (every operation below is row-wise, so a
    # row's token does not depend on which rows are beside it)
    B = logits.shape[0]

    def take(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:  # no copy when the rows are all rows
        return t if rows.numel() == B else t[rows]

    out = torch.empty(B, dtype=torch.long, device=logits.device)
    if st.greedy_rows.numel():
        rows = st.greedy_rows
        out[rows] = take(logits, rows).argmax(dim=-1)
    if st.plain_rows.numel():  # vocabulary order
        rows = st.plain_rows
        scaled = take(logits, rows) / take(st.temperature, rows)[:, None]
        out[rows] = _inverse_cdf(scaled, take(uniforms, rows))[:, 0]
    if st.needs_filter:  # rows with top-k / top-p draw along their own descending order
        rows = st.filter_rows
        scaled = take(logits, rows) / take(st.temperature, rows)[:, None]
        out[rows] = _filtered_sample(scaled, take(st.top_k, rows), take(st.top_p, rows), take(uniforms, rows))
    return out
