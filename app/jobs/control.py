"""Job operations that need no engine: submit a file, pause / resume / cancel, export results.

These change only the store. A job running in another process notices a pause or cancel within its
runner's `poll_s` (see `app.jobs.runner`); `JobRunner.pause`/`cancel` also stop requests in flight at once.

Status moves: submit -> `queued`; pause: `queued`/`running` -> `paused`; resume: `paused` -> `queued`, or
`failed` -> `queued` with its failed items pending again; cancel: anything but `done`/`cancelled` ->
`cancelled` (its pending items never run).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from storage import Job, NotFoundError, Store

from . import batch_job
from .agent_task import create_agent_chat
from .files import batch_job_file, load_job_file, path_text

PAUSABLE = ("queued", "running")
RESUMABLE = ("paused", "failed")
FINAL = ("done", "cancelled")


async def require_job(store: Store, job_id: int) -> Job:
    """The job. Raises NotFoundError (`job N does not exist`), StorageError."""
    job = await store.get_job(job_id)
    if job is None:
        raise NotFoundError(f"job {job_id} does not exist", store.path)
    return job


async def submit_job(store: Store, path: str | Path, name: str | None = None) -> Job:
    """Read a job file (`app.jobs.files.load_job_file`) and store it as a queued job; nothing runs.

    An agent task's transcript chat is created here (its id goes into the job's spec as `chat_id`), so it
    is listed in the TUI from the start.
    Raises:
        ValueError: the file is not a valid job file (the message names it). StorageError.
    """
    kind, job_name, items, spec = await asyncio.to_thread(load_job_file, path, name)  # a big file: not on the loop
    if kind == "agent":
        spec = {**spec, "chat_id": await create_agent_chat(store, job_name, spec)}
    return await store.create_job(kind, job_name, items, spec, source_path=path_text(Path(path).resolve()))


async def submit_batch(store: Store, data: bytes, name: str, spec: dict | None = None) -> Job:
    """Store an OpenAI Batch file's bytes as a queued batch job (`files.batch_job_file`); nothing runs.

    Args:
        store: the open store.
        data: the file's bytes.
        name: the job's name.
        spec: more fields for the job's spec (e.g. the Batch API's batch object), next to `format`.
    Raises:
        ValueError: the file holds no request. StorageError.
    """
    kind, job_name, items, job_spec = batch_job_file(data, name)
    return await store.create_job(kind, job_name, items, {**job_spec, **(spec or {})})


async def pause_job(store: Store, job_id: int) -> Job:
    """Mark a queued or running job paused. Raises NotFoundError, ValueError (other status), StorageError."""
    await _expect(store, job_id, PAUSABLE, "pause")
    return await store.set_job_status(job_id, "paused")


async def resume_job(store: Store, job_id: int) -> Job:
    """Queue a paused job again (a failed one with its failed items retried).

    Raises NotFoundError, ValueError (not paused or failed), StorageError.
    """
    job = await _expect(store, job_id, RESUMABLE, "resume")
    if job.status == "failed":
        await store.retry_failed_items(job_id)
    return await store.set_job_status(job_id, "queued")


async def cancel_job(store: Store, job_id: int) -> Job:
    """Mark a job cancelled. Raises NotFoundError, ValueError (done or cancelled already), StorageError."""
    job = await require_job(store, job_id)
    if job.status in FINAL:
        raise ValueError(f"job {job_id} is {job.status}: nothing to cancel")
    return await store.set_job_status(job_id, "cancelled")


async def export_lines(store: Store, job_id: int) -> list[dict]:
    """A batch job's OpenAI Batch output lines, one per item in input order (`batch_job.export_line`).

    Raises NotFoundError, ValueError (an agent task: its transcript is a chat), StorageError.
    """
    job = await require_job(store, job_id)
    if job.kind != "batch":
        raise ValueError(f"job {job_id} is an agent task, not a batch job: its transcript is chat "
                         f"{job.spec.get('chat_id')} (open it in the TUI)")
    return [batch_job.export_line(item, job.status) for item in await store.list_items(job_id)]


async def _expect(store: Store, job_id: int, statuses: tuple[str, ...], verb: str) -> Job:
    job = await require_job(store, job_id)
    if job.status not in statuses:
        raise ValueError(f"job {job_id} is {job.status}: only a {' or '.join(statuses)} job can be {verb}d")
    return job
