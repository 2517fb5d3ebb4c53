"""The roofline report's arithmetic: weight bytes a decode step reads, and measured step time over the bound."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.roofline import decode_roofline, measured_copy_bandwidth, nominal_bandwidth, weight_bytes_read


def _llama(tied: bool) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg)


@pytest.mark.parametrize("tied", [True, False])
def test_weight_bytes_count_every_matrix_once_but_not_an_untied_input_embedding(tied):
    model = _llama(tied)
    every = sum(p.numel() * 4 for p in model.parameters())  # parameters() yields a tied tensor once
    embedding = 1000 * 64 * 4
    assert weight_bytes_read(model) == (every if tied else every - embedding)
    if tied:
        assert every == sum(p.numel() * 4 for n, p in model.named_parameters() if n != "lm_head.weight")


def test_decode_roofline_divides_measured_time_by_bytes_over_bandwidth():
    bandwidth = {"measured_copy_bytes_per_s": 1e10, "nominal_bytes_per_s": None, "peak_bytes_per_s": 1e10,
                 "peak_source": "measured copy"}
    steps = [(0.030, 4_000_000, 1_000_000), (0.050, 6_000_000, 3_000_000)]  # seconds, KV read, KV live
    r = decode_roofline(steps, weight_bytes=100_000_000, bandwidth=bandwidth)
    assert r["num_steps"] == 2 and r["decode_step_ms_mean"] == pytest.approx(40.0)
    assert r["kv_read_bytes_mean"] == 5_000_000 and r["kv_live_bytes_mean"] == 2_000_000
    assert r["bound_ms"] == pytest.approx(10.5)  # (100 MB + 5 MB) / 10 GB/s
    assert r["live_bound_ms"] == pytest.approx(10.2)
    assert r["step_over_bound"] == pytest.approx(40.0 / 10.5)
    assert decode_roofline([], 1, bandwidth)["step_over_bound"] is None


def test_cpu_bandwidth_is_measured_and_has_no_nominal_value():
    assert nominal_bandwidth(torch.device("cpu")) is None
    assert 1e8 < measured_copy_bandwidth(torch.device("cpu"), nbytes=64 * 2**20, repeats=2) < 1e13
