"""The chat-arrival benchmark's smoke mode end to end (random:tiny, 8 rows, 3 one-token chats at random moments
beside a joining job): every chat gets its token, the job runs meanwhile, the report is well formed. No timing is
asserted."""

from __future__ import annotations

from conftest import run_benchmark_smoke


def test_chat_arrival_smoke(tmp_path):
    result = run_benchmark_smoke("chat_arrival", tmp_path, "chat-arrival")
    assert len(result["ttft_ms"]["all"]) == 3 and result["ttft_ms"]["max"] >= result["ttft_ms"]["median"] > 0
    assert result["counters"]["num_prompt_tokens"] > 0 and result["background_output_tok_s"] > 0
    assert result["args"]["chats"] == 3 and result["model"] == "random:tiny"
