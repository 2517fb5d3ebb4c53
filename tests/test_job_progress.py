"""Job progress without an engine: durations for people, the share of the work done counting the tokens of the
items generating (never past the total, never backwards while running), and the ETA it gives."""

from __future__ import annotations

import io
import math

import pytest

from app.jobs import JobProgress, ProgressPrinter, format_duration
from app.jobs.progress import JobRun
from storage import Job


@pytest.mark.parametrize("seconds, text", [
    (0, "<1s"), (0.4, "<1s"), (1, "1s"), (45.4, "45s"), (59.6, "1m 00s"), (80, "1m 20s"), (605, "10m 05s"),
    (3599, "59m 59s"), (3600, "1h 00m"), (7500, "2h 05m"), (86400, "1d 00h"), (3 * 86400 + 4 * 3600, "3d 04h")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("bad", [-1, math.inf, math.nan])
def test_format_duration_refuses_what_is_not_a_duration(bad):
    with pytest.raises(ValueError, match="seconds"):
        format_duration(bad)


def job(total: int, done: int = 0, failed: int = 0, status: str = "running") -> Job:
    return Job(7, "batch", "j", status, None, {}, total, done, failed, None, None)


class NoEngine:
    def cancel(self, request_id):
        raise KeyError(request_id)


@pytest.mark.parametrize("status", ["done", "failed", "cancelled", "paused", "queued"])
def test_stored_progress_fraction_by_status(status):
    p = JobProgress.of(job(5, 2, 1, status))
    assert p.fraction == (1.0 if status == "done" else 0.6)
    assert p.percent == (100 if status == "done" else 60)
    assert JobProgress.of(job(5, 5, 0, status)).fraction == 1.0
    assert JobProgress.of(job(0, status=status)).fraction == 1.0


def test_percent_rounds_down_so_100_means_finished():
    assert JobProgress(1, "running", 0, 0, 1, partial=0.996).percent == 99
    assert JobProgress(1, "running", 29, 0, 100).percent == 29  # not 28 (29/100*100 is 28.999...)


def test_generating_items_count_their_tokens_against_max_tokens():
    run = JobRun(job(4), NoEngine())
    assert run.snapshot("running").fraction == 0 and run.snapshot("running").eta_s is None
    run.submitted("a", 0, max_tokens=100)
    run.submitted("b", 1, max_tokens=50)
    for _ in range(25):
        run.token(0)
        run.token(1)
    p = run.snapshot("running")
    assert p.partial == pytest.approx(0.25 + 0.5)
    assert p.fraction == pytest.approx(0.75 / 4) and p.output_tokens == 50
    assert p.eta_s is not None and p.eta_s > 0


def test_progress_never_dips_when_an_item_ends_and_never_passes_the_total():
    run = JobRun(job(2), NoEngine())
    seen = []
    run.on_change = lambda: seen.append(run.snapshot("running").fraction)
    run.submitted("a", 0, max_tokens=4)
    run.submitted("b", 1, max_tokens=4)
    for _ in range(10):  # more tokens than the budget (a budget is what was asked, not a promise)
        run.token(0)
    seen.append(run.snapshot("running").fraction)
    run.ended("a")  # the request is over before its outcome is stored: its work still counts
    seen.append(run.snapshot("running").fraction)
    run.item_finished(True, idx=0)
    run.token(1)
    seen.append(run.snapshot("running").fraction)
    run.ended("b")
    run.item_finished(False, idx=1)
    assert seen == sorted(seen) and seen[0] == 0.5 and seen[-1] == 1.0
    assert all(0 <= f <= 1 for f in seen)
    assert (run.done, run.failed, run.generating) == (1, 1, {})


def test_a_paused_or_cancelled_job_shows_only_its_finished_items():
    run = JobRun(job(4, done=1), NoEngine())
    run.submitted("a", 1, max_tokens=10)
    for _ in range(5):
        run.token(1)
    assert run.snapshot("running").fraction == pytest.approx(1.5 / 4)
    for status in ("paused", "cancelled", "queued"):
        p = run.snapshot(status)
        assert (p.fraction, p.partial, p.eta_s) == (0.25, 0.0, None)


def test_eta_from_work_done_in_this_run(monkeypatch):
    run = JobRun(job(10, done=4), NoEngine(), started=100.0)
    run.submitted("a", 4, max_tokens=10)
    for _ in range(5):
        run.token(4)
    run.item_finished(True, idx=4)
    run.submitted("b", 5, max_tokens=10)
    for _ in range(5):
        run.token(5)
    monkeypatch.setattr("app.jobs.progress.time.perf_counter", lambda: 110.0)
    p = run.snapshot("running")  # 1.5 items in 10 s, 4.5 left
    assert p.eta_s == pytest.approx(30.0)


def test_progress_printer_shows_a_readable_eta():
    out = io.StringIO()
    ProgressPrinter(out)(JobProgress(3, "running", 2, 0, 5, tokens_per_s=12.5, eta_s=80, partial=0.5))
    assert out.getvalue() == "baton: jobs: job 3 running: 2/5 done, 0 failed, 50%, 12.5 tok/s, ETA 1m 20s\n"
