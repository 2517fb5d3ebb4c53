"""The serving benchmark's smoke mode: every system serves the same ShareGPT requests, metrics are sane, and
the batched systems' greedy tokens equal one-at-a-time `generate`."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import serving
from benchmarks.systems import SYSTEMS, RunOptions
from benchmarks.systems.common import attention_implementation
from benchmarks.systems.orca_kv import OrcaKV
from benchmarks.workload import ServingRequest, arrival_offsets, build_requests

BATCHED = ("static", "orca", "orca-packed", "baton")


@pytest.fixture(scope="module")
def smoke_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("serving")
    assert serving.main(["--smoke", "--save-tokens", "--out-dir", str(out)]) == 0
    files = list(out.glob("*-serving-smoke.json"))
    assert len(files) == 1
    return json.loads(files[0].read_text()), out


def test_smoke_writes_every_system_with_sane_metrics(smoke_result):
    result, out = smoke_result
    (run,) = result["runs"]
    assert list(run["systems"]) == list(SYSTEMS)
    for name, s in run["systems"].items():
        assert s["completed"] == result["workload"]["num_prompts"] == 6, name
        assert s["output_throughput"] > 0 and s["request_throughput"] > 0 and s["total_token_throughput"] > 0
        for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
            d = s[metric]
            assert 0 <= d["median"] <= d["p90"] <= d["p99"], (name, metric)
        for r in s["requests"]:
            assert r["output_tokens"] == r["target_tokens"] == len(r["token_ids"]), (name, r["index"])
            assert 0 <= r["ttft_ms"] <= r["e2e_ms"], (name, r["index"])
        assert s["peak_memory_bytes"] > 0
    assert run["systems"]["baton"]["kv_cache_bytes"] > 0
    assert 0 <= run["systems"]["baton"]["idle_fraction"] < 1
    assert set(run["baton_ratios"]) == set(SYSTEMS) - {"baton"}
    roof = run["systems"]["baton"]["roofline"]  # decode steps against the memory-bandwidth bound
    assert "decode_steps" not in run["systems"]["baton"]
    assert roof["num_steps"] == run["systems"]["baton"]["counters"]["num_decode_steps"] > 0
    assert roof["weight_bytes"] > 0 and roof["kv_live_bytes_mean"] <= roof["kv_read_bytes_mean"]
    assert roof["peak_bytes_per_s"] == roof["measured_copy_bytes_per_s"] > 1e8  # CPU: the measured copy
    assert roof["decode_step_ms_mean"] > 0 and roof["step_over_bound"] > 0.2
    plots = sorted(p.name for p in out.glob("*.png"))
    assert plots == sorted(result["plots"]) and len(plots) == 2  # throughput bars, latency CDFs


def test_smoke_greedy_tokens_equal_sequential(smoke_result):
    result, _ = smoke_result
    (run,) = result["runs"]
    ref = [r["token_ids"] for r in run["systems"]["sequential"]["requests"]]
    for name in BATCHED:
        assert [r["token_ids"] for r in run["systems"][name]["requests"]] == ref, name
        assert run["greedy_match_sequential"][name]["match_fraction"] == 1.0


def test_rows_joining_a_running_batch_keep_greedy_tokens(tiny):
    """Uneven lengths in a small batch: newcomers join while other rows decode (Orca's mixed iterations); the
    last two arrive later, so every system also waits for arrivals."""
    base = build_requests(tiny.tokenizer, 6, seed=1, max_input=64, max_output=16)
    requests = [ServingRequest(r.index, r.sample_id, r.prompt_ids, 2 + 2 * r.index, max(0, r.index - 3) * 0.01)
                for r in base]
    attn = tiny.model.config._attn_implementation
    tokens = {}
    for name in ("sequential", *BATCHED):
        with attention_implementation(tiny.model, attn):
            served = SYSTEMS[name](tiny, requests, RunOptions(batch_size=3))
        tokens[name] = [r.token_ids for r in served.records]
        assert all(r.token_times[0] >= r.arrival for r in served.records), name
        assert [len(t) for t in tokens[name]] == [r.output_len for r in requests], name
        if name.startswith("orca"):
            assert served.extra["num_mixed_iterations"] > 0
    for name in BATCHED:
        assert tokens[name] == tokens["sequential"], name


def test_poisson_arrivals_are_seeded_and_start_at_zero():
    a = arrival_offsets(50, 4.0, seed=3)
    assert a == arrival_offsets(50, 4.0, seed=3) != arrival_offsets(50, 4.0, seed=4)
    assert a[0] == 0 and all(x < y for x, y in zip(a, a[1:]))
    assert 5 < a[-1] < 25  # 49 gaps of mean 0.25 s
    assert arrival_offsets(3, None, seed=0) == [0.0, 0.0, 0.0]


def test_orca_kv_keeps_every_row_when_it_grows_and_removes(tiny):
    kv = OrcaKV(tiny.model, torch.device("cpu"), max_rows=8)
    written: dict[int, list[torch.Tensor]] = {}

    def forward(new: dict[int, int]) -> None:  # row -> new tokens, K = random, V = 2K
        src_b, src_t, dst_c = [], [], []
        for r, q in new.items():
            src_b += [r] * q
            src_t += range(q)
            dst_c += range(kv.lengths[r], kv.lengths[r] + q)
        kv.plan_write(src_b, src_t, src_b, dst_c)
        key = torch.randn(len(kv.lengths), kv.kv_heads, max(new.values()), kv.head_dim)
        for layer in range(kv.num_layers):
            kv.write(layer, key, 2 * key)
        for r, q in new.items():
            written.setdefault(r, []).append(key[r, :, :q])
        kv.commit([new.get(r, 0) for r in range(len(kv.lengths))])

    for _ in range(4):
        kv.add_row()
    forward({0: 3, 1: 5, 2: 1, 3: 2})
    for _ in range(3):
        kv.add_row()
    forward({r: 300 if r == 6 else 1 for r in range(7)})  # more rows and more columns: both grow
    assert kv.cap_rows >= 7 and kv.cap_cols >= 301
    kv.remove(1)  # row 6 moves into slot 1
    expected = {r: torch.cat(written[r], dim=1) for r in range(7)}
    for row, source in enumerate([0, 6, 2, 3, 4, 5]):
        n = kv.lengths[row]
        assert n == expected[source].shape[1]
        for layer in range(kv.num_layers):
            assert torch.equal(kv.k[layer][row, :, :n], expected[source])
            assert torch.equal(kv.v[layer][row, :, :n], 2 * expected[source])
