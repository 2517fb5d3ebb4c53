"""`JobRunner`: works through the persistent job queue on one engine.

    runner = JobRunner(store, engine, on_progress=print)
    await runner.run_queued()            # every queued job, oldest first; returns when none is left
    await runner.run_queued(watch=True)  # ... and keeps waiting for new ones (cancel the task to stop)

A batch job's pending items all go to the engine at once (`app.jobs.batch`); an agent task's steps run one
after another (`app.jobs.agent`). Every item's outcome is committed as it completes, so after a crash or a
kill the job resumes with the items not yet finished, and the store never lets an item finish twice. A job is
taken with `Store.claim_job` (a compare-and-swap from `queued` to `running`), so when several runners share
one queue (in this process or others) each job runs in exactly one of them.

Pausing or cancelling a job that runs here cancels its requests in flight (their items stay pending); the
same request made by another process (`baton jobs pause ID` while `baton jobs run` works) is noticed within
`poll_s` seconds, because a running job's status is re-read from the store that often.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from storage import Job, StorageError, Store

from . import agent_task, batch_job, control
from .progress import JobProgress, JobRun

if TYPE_CHECKING:
    from backend import Engine

log = logging.getLogger(__name__)

#: Run stop reasons that are job statuses set by pause/cancel (kept when the run ends).
STOPPED = ("paused", "cancelled")


class JobRunner:
    """Runs stored jobs on an engine and publishes their progress.

    Args:
        store: the open store holding the jobs.
        engine: a started engine, or None until there is one (the TUI sets `engine` once its model is loaded):
            pause, resume, cancel and progress work without it; running jobs raises RuntimeError.
        on_progress: called (on the event loop) with a `JobProgress` whenever an item of a running job
            finishes, its status changes, and every `poll_s` seconds while it runs. Exceptions it raises
            are logged and ignored.
        poll_s: how often a running job's status is re-read from the store (seconds).
    """

    def __init__(self, store: Store, engine: Engine | None, on_progress: Callable[[JobProgress], None] | None = None,
                 poll_s: float = 1.0) -> None:
        self.store = store
        self.engine = engine
        self.on_progress = on_progress
        self.poll_s = poll_s
        self._runs: dict[int, JobRun] = {}

    def progress(self, job_id: int) -> JobProgress | None:
        """The live progress of a job running here, or None."""
        run = self._runs.get(job_id)
        return None if run is None else run.snapshot("running")

    def describe(self, request_id: str) -> tuple[str, str] | None:
        """`("job: <name> #<item idx>", "job")` for an engine request a job running here has in flight, else
        None (a live panel's row label; a dictionary lookup per running job)."""
        for run in list(self._runs.values()):
            idx = run.item_of.get(request_id)
            if idx is not None:
                return f"job: {run.job.name} #{idx}", "job"
        return None

    async def run_queued(self, watch: bool = False, poll_s: float = 1.0) -> list[int]:
        """Run queued jobs one at a time in creation order (re-reading the queue after each).

        A job another runner (in this process or another) claims first is left to it (`Store.claim_job`).
        Args:
            watch: keep waiting for new queued jobs instead of returning when none is left.
            poll_s: seconds between looks at the queue while waiting.
        Returns:
            The ids of the jobs run, in order (only when `watch` is False; with it, cancel the task). A run
            that was interrupted (its requests cancelled by someone else, e.g. an engine shutting down)
            leaves its job queued and ends the loop (with `watch`: waits `poll_s` before going on).
        Raises:
            RuntimeError: the engine is not running. StorageError: the store fails.
        """
        ran: list[int] = []
        while True:
            claimed = await self._claim_next()
            if claimed is not None:
                job = await self._run_claimed(claimed)
                ran.append(job.id)
                if job.status != "queued":
                    continue
                if not watch:  # interrupted (its requests were cancelled in the engine): do not spin on it
                    return ran
                await asyncio.sleep(poll_s)
            elif not watch:
                return ran
            else:
                await asyncio.sleep(poll_s)

    async def run_job(self, job_id: int) -> Job:
        """Run a job's pending items until they are all finished, or the job is paused or cancelled.

        A job that is not queued (paused, cancelled, done, failed, or running in another runner), or that
        another runner claims first, is returned as it is. The job ends `done` (a batch job also when some
        items failed), `failed` (an agent step failed), or keeps the `paused` / `cancelled` status it was
        given. If the task is cancelled, the job goes back to `queued`.
        Returns:
            The job as stored at the end.
        Raises:
            NotFoundError: no such job. RuntimeError: the engine is not running, or the job is already
            running in this runner. StorageError: the store fails (the job stays `running` in the store,
            and is queued again when the store is opened after this process has ended).
        """
        job = await control.require_job(self.store, job_id)
        if job.status == "running" and job_id in self._runs:
            raise RuntimeError(f"job {job_id} is already running")
        if job.status != "queued":
            return job
        self._check_engine()
        claimed = await self.store.claim_job(job_id)
        if claimed is None:  # another runner was first
            return await control.require_job(self.store, job_id)
        return await self._run_claimed(claimed)

    async def pause(self, job_id: int) -> Job:
        """Pause a job: no new items start; requests in flight here are cancelled and their items stay
        pending. Raises NotFoundError, ValueError (the job is not queued or running), StorageError."""
        job = await control.pause_job(self.store, job_id)
        self._stop(job_id, "paused")
        return job

    async def resume(self, job_id: int) -> Job:
        """Queue a paused (or failed) job again; `run_queued` picks it up. Raises as `control.resume_job`."""
        job = await control.resume_job(self.store, job_id)
        self._publish_job(job)
        return job

    async def cancel(self, job_id: int) -> Job:
        """Cancel a job for good; requests in flight here are cancelled, its pending items never run.
        Raises NotFoundError, ValueError (the job is done or cancelled already), StorageError."""
        job = await control.cancel_job(self.store, job_id)
        self._stop(job_id, "cancelled")
        return job

    # ------------------------------------------------------------------------------- internals
    def _check_engine(self) -> None:
        if self.engine is None or not self.engine.started:
            raise RuntimeError("the engine is not running: start it before running jobs")

    async def _claim_next(self) -> Job | None:
        """Claim the oldest queued job that no other runner claims first; None when there is none."""
        for job in reversed(await self.store.list_jobs()):
            if job.status == "queued":
                self._check_engine()
                claimed = await self.store.claim_job(job.id)
                if claimed is not None:
                    return claimed
        return None

    async def _run_claimed(self, job: Job) -> Job:
        """Run a job this runner has claimed (it is `running`, owned by this process) to its end."""
        job_id = job.id
        run = JobRun(job, self.engine)
        run.on_change = lambda: self._publish(run, "running")
        self._runs[job_id] = run
        watcher = asyncio.create_task(self._watch(run))
        try:
            self._publish(run, "running")
            final = await (agent_task.run_steps(self.store, run) if job.kind == "agent" else self._run_batch(run))
        except asyncio.CancelledError:
            if run.stop not in STOPPED:
                await self.store.set_job_status(job_id, "queued")
            raise
        finally:
            watcher.cancel()
            self._runs.pop(job_id, None)
        if final is None and run.stop in STOPPED:  # paused or cancelled: keep the status it was given
            job = await control.require_job(self.store, job_id)
            self._publish(run, job.status)
            return job
        job = await self.store.set_job_status(job_id, final or "queued")  # None: the engine went away
        self._publish(run, job.status)
        return job

    async def _run_batch(self, run: JobRun) -> str | None:
        """Run every pending item at once. Returns "done", or None when items are left pending."""
        tasks = [asyncio.create_task(batch_job.run_item(self.store, run, item))
                 for item in await self.store.pending_items(run.job.id)]
        try:
            if tasks:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:  # also on cancellation: stop the rest and let them end
            failure = next((t.exception() for t in tasks if t.done() and not t.cancelled()
                            and t.exception() is not None), None)
            if failure is not None or not all(t.done() for t in tasks):
                run.request_stop("interrupted")
                await asyncio.gather(*tasks, return_exceptions=True)
        if failure is not None:  # e.g. the store failed: report the first failure
            raise failure
        return None if await self.store.pending_items(run.job.id, limit=1) else "done"

    def _stop(self, job_id: int, status: str) -> None:
        run = self._runs.get(job_id)
        if run is not None:
            run.request_stop(status)
            self._publish(run, status)

    async def _watch(self, run: JobRun) -> None:
        """Every `poll_s`: publish progress, and stop the run if another process paused or cancelled it."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                job = await self.store.get_job(run.job.id)
            except StorageError:  # e.g. locked for longer than the busy timeout: try again next time
                log.warning("cannot read the status of job %s", run.job.id, exc_info=True)
                continue
            if job is None or job.status in ("paused", "cancelled"):
                run.request_stop(job.status if job is not None else "cancelled")
                self._publish(run, run.stop or "cancelled")
                return
            self._publish(run, "running")

    def _publish(self, run: JobRun, status: str) -> None:
        self._emit(run.snapshot(status))

    def _publish_job(self, job: Job) -> None:
        self._emit(JobProgress.of(job))

    def _emit(self, progress: JobProgress) -> None:
        if self.on_progress is None:
            return
        try:
            self.on_progress(progress)
        except Exception:  # a broken view must not stop the job
            log.exception("job progress callback failed")
