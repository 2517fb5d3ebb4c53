"""The soak run's smoke mode end to end: chats through `Sessions` with cancels, a batch job run by `baton jobs run`
in another process that is SIGKILLed when half its items are done and started again, one SQLite file; the
report must say nothing was lost or duplicated. The kill point is a count of finished items, not a time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_soak_smoke_loses_and_duplicates_nothing(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--smoke", "--out-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=280)
    files = list(tmp_path.glob("*-soak-smoke.json"))
    assert len(files) == 1, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(files[0].read_text())
    assert done.returncode == 0 and report["ok"], report["problems"]
    assert report["problems"] == []

    chats = report["chats"]
    assert chats["sessions"] == 4 and chats["turns"] > 0
    assert chats["lost"] == chats["duplicated"] == chats["stray_messages"] == 0
    assert chats["user_found"] == chats["user_expected"] == chats["turns"]
    assert chats["answers_found"] == chats["answers_expected"] > 0
    assert chats["sql_duplicate_user_groups"] == chats["sql_duplicate_answer_groups"] == 0
    assert chats["failed_turns"] == 0 and not any(chats["mismatches"].values())
    assert sum(chats["finish_reasons"].values()) == chats["answers_found"]

    job = report["job"]
    assert job["items_expected"] == job["item_rows"] == job["distinct_custom_ids"] == 40
    assert job["lost"] == job["duplicated"] == 0
    assert job["statuses"] == {"done": 40} and job["job_status"] == "done"
    assert job["distinct_request_ids"] == 40 and job["done_before_a_kill_changed_after"] == 0
    assert job["sigkills"] == 1 and job["resumes"] == 1
    assert all(pending > 0 for pending in job["pending_at_kills"])  # killed mid-job, so it had to resume

    assert report["rss"]["this_process"]["peak_mib"] > 0 and report["rss"]["job_runner_by_pid"]
    assert report["latency_ms"]["answers"] > 0 and report["latency_ms"]["ttft_from_send"]["p99"] > 0
