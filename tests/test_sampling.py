"""Sampling: seeded reproducibility alone and in a batch; top-k / top-p never emit excluded tokens."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backend import SamplingParams
from backend.sampler import SamplingTensors, draw_uniforms, sample


def _allowed(logits: torch.Tensor, p: SamplingParams) -> set[int]:
    """Reference top-k then top-p set for one row, computed the slow way."""
    probs = (logits / p.temperature).softmax(-1)
    order = probs.argsort(descending=True).tolist()
    if p.top_k > 0:
        order = order[:p.top_k]
    kept = probs[order] / probs[order].sum()
    allowed, mass = set(), 0.0
    for tok, q in zip(order, kept.tolist()):
        allowed.add(tok)
        mass += q
        if mass >= p.top_p - 1e-6:
            break
    return allowed


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), top_k=st.integers(0, 8), top_p=st.floats(0.05, 1.0),
       temperature=st.floats(0.2, 2.0))
def test_top_k_top_p_never_emit_excluded_tokens(seed, top_k, top_p, temperature):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 50, generator=g) * 3
    params = [SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p),
              SamplingParams(temperature=0),
              SamplingParams(temperature=temperature, top_k=3)]
    st_ = SamplingTensors.build(params, torch.device("cpu"))
    allowed = [_allowed(logits[0], params[0]), {int(logits[1].argmax())}, _allowed(logits[2], params[2])]
    for _ in range(40):
        u = draw_uniforms([None] * 3, g, torch.device("cpu"))
        picked = sample(logits, st_, u).tolist()
        for row, tok in enumerate(picked):
            assert tok in allowed[row], (row, tok, allowed[row])


def test_sampling_covers_the_allowed_set():
    """Not just argmax: with top_k=4 and flat logits all four tokens come up."""
    logits = torch.tensor([[5.0, 5.0, 5.0, 5.0, 1.0, 0.0]])
    st_ = SamplingTensors.build([SamplingParams(temperature=1.0, top_k=4)], torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    seen = {int(sample(logits, st_, draw_uniforms([None], g, torch.device("cpu")))[0]) for _ in range(200)}
    assert seen == {0, 1, 2, 3}


def test_seeded_request_is_reproducible_alone_and_inside_a_batch(make_engine):
    engine = make_engine(max_batch_size=8)
    seeded = SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95, seed=1234, ignore_eos=True)
    alone = engine.generate_batch(["Tell me a story"], seeded)[0].token_ids
    again = engine.generate_batch(["Tell me a story"], seeded)[0].token_ids
    noisy = SamplingParams(max_tokens=30, temperature=1.2, ignore_eos=True)
    mixed = engine.generate_batch(["Other prompt", "Tell me a story", "Third one, longer prompt here"],
                                  [noisy, seeded, noisy])
    assert alone == again == mixed[1].token_ids
    other_seed = engine.generate_batch(["Tell me a story"],
                                       SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95, seed=99,
                                                      ignore_eos=True))[0].token_ids
    assert other_seed != alone


def test_greedy_rows_stay_greedy_next_to_sampled_rows(make_engine, tiny):
    from conftest import solo_greedy

    engine = make_engine(max_batch_size=4)
    prompt = engine.tokenize("abc")
    greedy = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    hot = SamplingParams(max_tokens=16, temperature=1.5, top_k=20, ignore_eos=True)
    res = engine.generate_batch([prompt, "xyz", prompt, "hello"], [greedy, hot, greedy, hot])
    ref = solo_greedy(tiny, prompt, 16)
    assert res[0].token_ids == ref and res[2].token_ids == ref


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), temperature=st.floats(0.3, 2.0))
def test_a_rows_draw_never_depends_on_its_neighbours_filters(seed, temperature):
    """Issue #9: one row's top-k / top-p used to switch every sampled row to the sorted order, so the same
    uniform picked another token beside a filtering neighbour than alone."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 64, generator=g) * 2
    plain = SamplingParams(temperature=temperature)
    filtering = SamplingParams(temperature=1.0, top_p=0.5, top_k=5)
    rows = [plain, filtering, plain, SamplingParams(temperature=0)]  # and a greedy row
    u = draw_uniforms([None] * 4, g, torch.device("cpu"))
    alone = [int(sample(logits[i:i + 1], SamplingTensors.build([p], torch.device("cpu")), u[i:i + 1])[0])
             for i, p in enumerate(rows)]
    together = sample(logits, SamplingTensors.build(rows, torch.device("cpu")), u).tolist()
    assert together == alone


def test_seeded_request_gives_the_same_tokens_beside_a_top_p_request(make_engine):
    engine = make_engine(max_batch_size=8)
    seeded = SamplingParams(max_tokens=24, temperature=1.0, seed=7, ignore_eos=True)
    alone = engine.generate_batch(["Tell me a story"], seeded)[0].token_ids
    narrow = SamplingParams(max_tokens=30, temperature=1.0, top_p=0.5, ignore_eos=True)
    mixed = engine.generate_batch(["Other prompt", "Tell me a story", "A third prompt"], [narrow, seeded, narrow])
    assert mixed[1].token_ids == alone


def test_top_k_top_p_over_candidates_draw_what_a_full_sort_draws():
    """Filtered rows look at their `CANDIDATES` most likely tokens (`topk`) instead of sorting the whole row;
    for the same uniforms they pick the same tokens as the full sort, including rows whose kept set is wider
    than the candidates (flat rows, top-k above them), which fall back to the sort."""
    from backend.sampler import CANDIDATES, _filtered_sample, _inverse_cdf, filtered_logits

    g = torch.Generator().manual_seed(3)
    V = 4 * CANDIDATES
    logits = torch.cat([torch.randn(4, V, generator=g) * 3, torch.randn(2, V, generator=g) * 0.2])  # last: flat
    top_k = torch.tensor([0, 40, 2 * CANDIDATES, 0, 0, 0])
    top_p = torch.tensor([0.9, 0.95, 0.9, 1.0 - 1e-3, 0.5, 0.95])
    for _ in range(50):
        u = torch.rand(6, generator=g)
        kept, ids = filtered_logits(logits, top_k, top_p)
        assert _filtered_sample(logits, top_k, top_p, u).tolist() == ids.gather(1, _inverse_cdf(kept, u))[:, 0].tolist()
