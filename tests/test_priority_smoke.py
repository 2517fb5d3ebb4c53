"""The priority benchmark's smoke mode end to end (random:tiny, 8 background rows, 2 chats per scenario): every
scenario runs, the step-cost model is ready before the target-on scenarios' chats, the background keeps
producing with and without a chat, the report and its docs table are well formed. No timing is asserted."""

from __future__ import annotations

from conftest import run_benchmark_smoke


def test_priority_smoke(tmp_path):
    result = run_benchmark_smoke("priority", tmp_path, "priority")
    sc = result["scenarios"]
    assert set(sc) == {"idle", "busy, target off", "busy, target 1.5", "joining, target off", "joining, target 1.5"}
    for name, row in sc.items():
        assert len(row["ttft_ms"]["all"]) == len(row["tpot_ms"]["all"]) == 2, name
        assert row["itl_ms_p99"] > 0 and row["ttft_ms"]["median"] > 0
        if name != "idle":
            assert row["background_tok_s_between_chats"] > 0, name  # the background runs between chats
            assert row["background_total_tok_s_no_chat"] >= row["background_tok_s_no_chat"] >= 0, name
            if name.startswith("joining"):  # a job that never ends: it runs in the window after the chats too
                assert row["background_tok_s_no_chat"] > 0, name
            assert row["background_tok_s_during_chat"] is not None
            # rows are sampled while chats decode; a sample may fall between a chat's steps: no strict order
            assert row["background_rows_during_chat_median"] <= row["batch_rows_during_chat_median"]
        if row["slo"] is not None:
            assert row["step_cost_coefficients"] is not None, name  # ready before the first chat
            assert row["slo_target_step_ms_median"] is not None, name
        else:
            assert row["slo_background_cap"] is None and row["counters_during_chats"]["num_slo_swap_outs"] == 0
    assert set(result["checks"]) == set(sc) - {"idle"}
    # only the joining job never ends, so only it surely runs in the window after the chats; the busy job's
    # 8 short rows may finish during the chats (then it has no no-chat rate to compare)
    assert "no_chat_throughput_over_off" in result["checks"]["joining, target 1.5"]
    busy_on, busy_off = sc["busy, target 1.5"], sc["busy, target off"]
    has_busy = bool(busy_on["background_total_tok_s_no_chat"] and busy_off["background_total_tok_s_no_chat"])
    assert ("no_chat_throughput_over_off" in result["checks"]["busy, target 1.5"]) == has_busy

    from benchmarks.priority import markdown
    table = markdown(result, "x.json")
    assert table.count("\n| busy, target 1.5 |") == 2 and "Reduced run" in table
