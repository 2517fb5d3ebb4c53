"""The TUI-level priority benchmark's smoke mode end to end, with the engine in a child process as `baton` runs it
(random:tiny, an 8-line job, 2 chat turns per scenario): the real app answers every turn through Pilot, the
report and its docs table are well formed. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_tui_priority_smoke_with_the_engine_in_a_child_process(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.tui_priority", "--smoke", "--engine-process", "on",
                           "--out-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=240)
    files = list(tmp_path.glob("*-tui-priority-smoke.json"))
    assert done.returncode == 0 and len(files) == 1, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(files[0].read_text())
    scenarios = result["scenarios"]
    assert list(scenarios) == ["idle, child process", "job, target off, child process",
                               "job, target 1.5, child process"]
    for name, row in scenarios.items():
        assert row["chats"] == 2 and all(n >= 1 for n in row["chat_tokens"]), name  # every turn was answered
        assert row["ttft_ms"]["median"] > 0 and row["job"] == (name != "idle, child process")

    from benchmarks.tui_priority import markdown
    table = markdown(result, "x.json")
    assert table.count("\n| ") == 1 + 1 + len(scenarios)  # header, rule, a row per scenario
