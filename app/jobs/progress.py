"""Progress of a running job: the `JobProgress` snapshots a runner publishes, and the live run state.

`JobProgress` is what a view shows (a progress bar per job): items done / failed / total, the output token
rate of this run and an estimate of the time left. `JobRun` is the runner's bookkeeping for one job while it
runs: the engine requests in flight (so pause and cancel can stop them) and the counters behind the rates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from storage import Job

if TYPE_CHECKING:
    from backend import Engine


@dataclass(frozen=True)
class JobProgress:
    """One job's progress.

    Attributes:
        job_id: the job.
        status: its status (`queued`, `running`, `paused`, `done`, `failed`, `cancelled`).
        done, failed, total: item counts (a malformed batch line counts as failed).
        tokens_per_s: output tokens per second of wall time in this run (0 before the first token).
        eta_s: estimated seconds until every item is finished, from this run's item rate; None until an
            item has finished in this run, and once the job is not running.
        output_tokens: output tokens generated in this run.
        elapsed_s: seconds since this run started.
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

    @property
    def pending(self) -> int:
        """Items neither done nor failed."""
        return self.total - self.done - self.failed

    @property
    def fraction(self) -> float:
        """Share of the items finished (done or failed), 1.0 for a job without items."""
        return (self.done + self.failed) / self.total if self.total else 1.0

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
    """

    job: Job
    engine: Engine
    done: int = 0
    failed: int = 0
    stop: str | None = None
    in_flight: set[str] = field(default_factory=set)
    item_of: dict[str, int] = field(default_factory=dict)
    output_tokens: int = 0
    finished_here: int = 0
    started: float = field(default_factory=time.perf_counter)
    on_change: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.done, self.failed = self.job.done, self.job.failed

    @property
    def total(self) -> int:
        return self.job.total

    def request_stop(self, status: str) -> None:
        """Stop submitting and cancel every request in flight; their items stay pending."""
        if self.stop is None or status == "cancelled":
            self.stop = status
        for request_id in list(self.in_flight):
            try:
                self.engine.cancel(request_id)
            except KeyError:  # not submitted yet, or already forgotten by the engine
                pass

    def submitted(self, request_id: str, idx: int) -> None:
        """Note a request sent to the engine for item `idx`."""
        self.in_flight.add(request_id)
        self.item_of[request_id] = idx

    def ended(self, request_id: str) -> None:
        """Note a request that is no longer in flight."""
        self.in_flight.discard(request_id)
        self.item_of.pop(request_id, None)

    def token(self) -> None:
        """Count one output token."""
        self.output_tokens += 1

    def item_finished(self, ok: bool, counted: bool = True) -> None:
        """Count an item that ended done (`ok`) or failed; `counted=False` when the store had it already."""
        if counted:
            if ok:
                self.done += 1
            else:
                self.failed += 1
            self.finished_here += 1
        if self.on_change is not None:
            self.on_change()

    def snapshot(self, status: str) -> JobProgress:
        """The current `JobProgress` under the given job status."""
        elapsed = time.perf_counter() - self.started
        rate = self.output_tokens / elapsed if elapsed > 0 else 0.0
        pending = self.total - self.done - self.failed
        eta = None
        if status == "running" and self.finished_here and elapsed > 0:
            eta = pending * elapsed / self.finished_here
        return JobProgress(self.job.id, status, self.done, self.failed, self.total, rate, eta,
                           self.output_tokens, elapsed)


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
        eta = f", ETA {p.eta_s:.0f} s" if p.eta_s is not None else ""
        print(f"baton: jobs: job {p.job_id} {p.status}: {p.done}/{p.total} done, {p.failed} failed, "
              f"{p.tokens_per_s:.1f} tok/s{eta}", file=self.out, flush=True)
