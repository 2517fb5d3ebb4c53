"""The chat-arrival benchmark's smoke mode end to end (random:tiny, 8 rows, 3 one-token chats at random moments
beside a joining job): every chat gets its token, the job runs meanwhile, the report is well formed. No timing is
asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_chat_arrival_smoke(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.chat_arrival", "--smoke", "--out-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    files = list(tmp_path.glob("*-chat-arrival-smoke.json"))
    assert done.returncode == 0 and len(files) == 1, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(files[0].read_text())
    assert len(result["ttft_ms"]["all"]) == 3 and result["ttft_ms"]["max"] >= result["ttft_ms"]["median"] > 0
    assert result["counters"]["num_prompt_tokens"] > 0 and result["background_output_tok_s"] > 0
    assert result["args"]["chats"] == 3 and result["model"] == "random:tiny"
