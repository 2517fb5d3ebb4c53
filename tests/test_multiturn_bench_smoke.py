"""The prefix-cache benchmarks' smoke modes end to end on `random:tiny`: the multi-turn replay (two ShareGPT
conversations of six turns, with and without the cache) and the shared-system-prompt batch job. Checks that
every turn ran, that each turn from the second on was served exactly the tokens it repeats from the previous
one (block floor), that the cache cut the prefill tokens and changed no greedy token, and that the Markdown
for `docs/benchmarks.md` renders and lands between its markers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import multiturn, shared_prefix
from benchmarks.docs_section import markers, replace_section


@pytest.fixture(scope="module")
def multiturn_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("multiturn")
    assert multiturn.main(["--smoke", "--out-dir", str(out)]) == 0
    files = list(out.glob("*-multiturn-smoke.json"))
    assert len(files) == 1
    return json.loads(files[0].read_text()), out


def test_multiturn_smoke_replays_every_turn_in_both_modes(multiturn_result):
    result, out = multiturn_result
    assert list(result["modes"]) == ["off", "on"]
    w = result["workload"]
    assert w["num_conversations"] == 2 and w["turns"] == 6
    for name, mode in result["modes"].items():
        turns = mode["turns"]
        assert [(r["conversation"], r["turn"]) for r in turns] == [(c, t) for c in range(2) for t in range(1, 7)]
        for r in turns:
            assert r["output_tokens"] == r["target_tokens"] == len(r["token_ids"]), (name, r)
            assert 0 < r["ttft_ms"] <= r["e2e_ms"] and r["prompt_ids_match_engine"], (name, r)
        assert [r["turn"] for r in mode["per_turn"]] == list(range(1, 7))
        # a turn's prompt holds the previous turn's: prompts grow
        for c in range(2):
            lens = [r["prompt_tokens"] for r in turns if r["conversation"] == c]
            assert lens == sorted(lens) and lens[0] < lens[-1]
    off, on = result["modes"]["off"], result["modes"]["on"]
    assert off["totals"]["cached_tokens"] == 0 and off["prefix_cache_capacity_bytes"] == 0
    assert all(r["status"] == "ok" for r in off["turns"])  # without a cache nothing is expected


def test_multiturn_smoke_cache_serves_what_each_turn_repeats(multiturn_result):
    result, _ = multiturn_result
    on = result["modes"]["on"]
    hits = on["hits"]
    assert hits["checked"] == 10 and hits["ok"] == 10 and hits["misses"] == [] and hits["more_than_expected"] == []
    bs = result["block_size"]
    prev = None
    for r in on["turns"]:
        if r["turn"] == 1:
            assert r["cached_tokens"] == r["expected_cached"] == 0
        else:
            # the previous prompt is a prefix of this one (byte-level tokenizer): all its whole blocks are hit
            assert r["cached_tokens"] == r["expected_cached"] >= prev["prompt_tokens"] // bs * bs
            assert r["cached_tokens"] % bs == 0 and r["computed_tokens"] >= 1
        prev = r
    assert on["counters"]["num_prefix_cache_hits"] == on["totals"]["cached_tokens"] > 0
    assert on["totals"]["computed_tokens"] < result["modes"]["off"]["totals"]["computed_tokens"]
    assert result["answers_equal_across_modes"] == {"equal": 12, "of": 12}
    names = [t["target"] for t in result["targets"]]
    assert len(names) == 4 and result["targets"][0]["met"] is True


def test_multiturn_smoke_writes_plot_and_docs_section(multiturn_result, tmp_path):
    result, out = multiturn_result
    assert Path(result["plot"]).exists() and result["plot"].endswith("-multiturn-smoke-ttft.png")
    text = multiturn.markdown(result)
    assert "| turn | prompt tokens |" in text and "| all (12 turns)" in text and "| target |" in text
    doc = tmp_path / "benchmarks.md"
    begin, end = markers(multiturn.SECTION)
    doc.write_text(f"# B\n\nprose\n{begin}\nold\n{end}\nmore prose\n")
    replace_section(multiturn.SECTION, text, doc)
    replace_section(multiturn.SECTION, text, doc)  # idempotent
    new = doc.read_text()
    assert new.startswith("# B\n\nprose\n") and new.endswith("more prose\n") and "old" not in new
    assert new.count("| turn | prompt tokens |") == 1
    with pytest.raises(ValueError):
        replace_section("no-such-section", text, doc)


def test_shared_prefix_smoke(tmp_path):
    assert shared_prefix.main(["--smoke", "--out-dir", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*-shared-prefix-smoke.json")
    result = json.loads(path.read_text())
    w = result["workload"]
    assert w["requests"] == 8 and w["system_tokens"] == 256 and w["shared_prefix_tokens"] > 256
    off, on = result["modes"]["off"], result["modes"]["on"]
    for m in (off, on):
        assert m["requests"] == 8 and m["errors"] == [] and m["output_tokens"] == 8 * 4
        assert m["prompt_tokens"] == w["prompt_tokens"] and m["output_tokens_per_s"] > 0
    assert off["cached_tokens"] == 0
    shared_blocks = w["shared_prefix_tokens"] // 16 * 16
    # one request computes the shared prompt; every other one starts from its blocks
    cached = sorted(on["cached_per_request"])
    assert cached[0] == 0 and all(c >= shared_blocks for c in cached[1:])
    assert on["computed_tokens"] == off["computed_tokens"] - sum(cached) <= off["computed_tokens"] - 7 * shared_blocks
    assert result["comparison"]["outputs_equal"] == 8 and result["comparison"]["requests_with_hits"] == 7
    assert "| cache |" in shared_prefix.markdown(result)
