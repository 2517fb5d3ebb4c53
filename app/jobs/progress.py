"""Progress of a running job: the `JobProgress` snapshots a runner publishes, and the live run state.

`JobProgress` is what a view shows (a progress bar per job): items done / failed / total, the share of the
work finished (counting the tokens of the items still generating), the output token rate of this run and an
estimate of the time left. `JobRun` is the runner's bookkeeping for one job while it runs: the engine
requests in flight (so pause and cancel can stop them) and the counters behind the rates.

Work is counted in items: a finished item (done or failed) is one, and an item still generating is the
share of its token budget (`max_tokens`) generated so far. An item that stops early (end of sequence, a stop
string) jumps to one when it finishes, so while a job runs its progress only ever grows, and never passes
the total; pausing or cancelling drops the part-done items (they start again on resume).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from storage import Job

if TYPE_CHECKING:
    from backend import Engine


def format_duration(seconds: float) -> str:
    """A duration for people, to the second: `"<1s"`, `"45s"`, `"1m 20s"`, `"2h 05m"`, `"3d 04h"`.

    Raises:
        ValueError: a negative or non-finite duration.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds: must be a finite duration >= 0, got {seconds}")
    s = round(seconds)
    if s < 1:
        return "<1s"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


@dataclass(frozen=True)
class JobProgress:
    """One job's progress.

    Attributes:
        job_id: the job.
        status: its status (`queued`, `running`, `paused`, `done`, `failed`, `cancelled`).
        done, failed, total: item counts (a malformed batch line counts as failed).
        tokens_per_s: output tokens per second of wall time in this run (0 before the first token).
        eta_s: estimated seconds until every item is finished, from the work done in this run (finished
            items and the tokens of the items generating); None before the first token of this run, and
            once the job is not running.
        output_tokens: output tokens generated in this run.
        elapsed_s: seconds since this run started.
        partial: the work of the items generating now, in items (each its tokens over its `max_tokens`,
            at most 1); 0 once the job is not running.
        taken: when the snapshot was taken (`time.monotonic()`), so a view can keep the newest.
    """

    job_id: int
    status: str
    done: int
    failed: int
    total: int
    tokens_per_s: float = 0.0
    eta_s: float | None = None
    output_tokens: int = 0
    elapsed_s: float = 0.0
    partial: float = 0.0
    taken: float = field(default_factory=time.monotonic)

    @property
    def pending(self) -> int:
        """Items neither done nor failed."""
        return self.total - self.done - self.failed

    @property
    def fraction(self) -> float:
        """Share of the work finished, in [0, 1]: finished items plus the generating items' tokens over the
        total; 1.0 for a `done` job and for a job without items."""
        if self.status == "done" or not self.total:
            return 1.0
        return min(1.0, max(0.0, (self.done + self.failed + self.partial) / self.total))

    @property
    def percent(self) -> int:
        """`fraction` as a whole percentage, rounded down: 100 only when the work is all finished."""
        return math.floor(self.fraction * 100 + 1e-9)  # 29/100 * 100 is 28.999...96 in floating point

    @classmethod
    def of(cls, job: Job) -> JobProgress:
        """The progress stored for a job that is not running here."""
        return cls(job.id, job.status, job.done, job.failed, job.total)


@dataclass
class JobRun:
    """Bookkeeping of one job while a runner works on it (event-loop thread only).

    Attributes:
        job: the job as it was when the run started.
        engine: the engine its requests go to.
        done, failed: current item counts.
        stop: None while running; once asked to stop, `"paused"` or `"cancelled"` (the job status set by
            pause / cancel) or `"interrupted"` (the run itself is ending: cancelled task, a store failure).
        in_flight: engine request ids submitted and not finished.
        item_of: request id -> the index (`JobItem.idx`) of the item it runs, for requests in flight.
        generating: item index -> `[tokens so far, max_tokens]` of every item submitted in this run and
            not finished yet (kept after its request ends, until its outcome is counted, so the work shown
            never dips between the two).
    """

    job: Job
    engine: Engine
    done: int = 0
    failed: int = 0
    stop: str | None = None
    in_flight: set[str] = field(default_factory=set)
    item_of: dict[str, int] = field(default_factory=dict)
    generating: dict[int, list[int]] = field(default_factory=dict)
    output_tokens: int = 0
    finished_here: int = 0
    started: float = field(default_factory=time.perf_counter)
    on_change: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.done, self.failed = self.job.done, self.job.failed

    @property
    def total(self) -> int:
        return self.job.total

    @property
    def partial(self) -> float:
        """The generating items' work, in items: each its tokens over its budget, at most 1."""
        return sum(min(1.0, tokens / budget) for tokens, budget in self.generating.values())

    def request_stop(self, status: str) -> None:
        """Stop submitting and cancel every request in flight; their items stay pending."""
        if self.stop is None or status == "cancelled":
            self.stop = status
        for request_id in list(self.in_flight):
            try:
                self.engine.cancel(request_id)
            except KeyError:  # not submitted yet, or already forgotten by the engine
                pass

    def submitted(self, request_id: str, idx: int, max_tokens: int = 1) -> None:
        """Note a request sent to the engine for item `idx`, which generates at most `max_tokens` tokens."""
        self.in_flight.add(request_id)
        self.item_of[request_id] = idx
        self.generating[idx] = [0, max(1, max_tokens)]

    def ended(self, request_id: str) -> None:
        """Note a request that is no longer in flight."""
        self.in_flight.discard(request_id)
        self.item_of.pop(request_id, None)

    def token(self, idx: int | None = None) -> None:
        """Count one output token (of item `idx`, when given)."""
        self.output_tokens += 1
        if idx is not None and idx in self.generating:
            self.generating[idx][0] += 1

    def item_finished(self, ok: bool, counted: bool = True, idx: int | None = None) -> None:
        """Count an item that ended done (`ok`) or failed; `counted=False` when the store had it already.
        `idx` (the item's index) ends its share of the generating work."""
        if idx is not None:
            self.generating.pop(idx, None)
        if counted:
            if ok:
                self.done += 1
            else:
                self.failed += 1
            self.finished_here += 1
        if self.on_change is not None:
            self.on_change()

    def snapshot(self, status: str) -> JobProgress:
        """The current `JobProgress` under the given job status (the generating work counts only while
        `running`: a paused or cancelled job's part-done items start again)."""
        elapsed = time.perf_counter() - self.started
        rate = self.output_tokens / elapsed if elapsed > 0 else 0.0
        partial = min(self.partial, self.total - self.done - self.failed) if status == "running" else 0.0
        remaining = self.total - self.done - self.failed - partial
        work_here = self.finished_here + partial
        eta = None
        if status == "running" and work_here > 0 and elapsed > 0:
            eta = max(0.0, remaining) * elapsed / work_here
        return JobProgress(self.job.id, status, self.done, self.failed, self.total, rate, eta,
                           self.output_tokens, elapsed, partial)


class ProgressPrinter:
    """An `on_progress` callback that prints one line per update to a text stream (`baton jobs run`):
    at most once per `interval` seconds while a job runs, and at every status change."""

    def __init__(self, out: IO[str], interval: float = 1.0) -> None:
        self.out = out
        self.interval = interval
        self._last: dict[int, tuple[float, str]] = {}

    def __call__(self, p: JobProgress) -> None:
        last_time, last_status = self._last.get(p.job_id, (0.0, ""))
        now = time.monotonic()
        if p.status == last_status and now - last_time < self.interval:
            return
        self._last[p.job_id] = (now, p.status)
        eta = f", ETA {format_duration(p.eta_s)}" if p.eta_s is not None else ""
        print(f"baton: jobs: job {p.job_id} {p.status}: {p.done}/{p.total} done, {p.failed} failed, "
              f"{p.percent}%, {p.tokens_per_s:.1f} tok/s{eta}", file=self.out, flush=True)
