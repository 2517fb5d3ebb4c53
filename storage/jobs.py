"""The persistent background-job queue part of `Store` (jobs and their items)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import writers
from .base import StoreBase
from .errors import NotFoundError
from .records import JOB_KINDS, JOB_STATUSES, Job, JobItem
from .rows import ITEM_COLUMNS, item_from_row, job_from_row, now, to_json

_JOB_SELECT = """
    SELECT j.*,
        (SELECT count(*) FROM job_item i WHERE i.job_id = j.id AND i.status = 'done') AS done,
        (SELECT count(*) FROM job_item i WHERE i.job_id = j.id AND i.status = 'failed') AS failed
    FROM job j
"""
_ITEM_SELECT = f"SELECT {', '.join(ITEM_COLUMNS)} FROM job_item"


class JobsMixin(StoreBase):
    """Jobs: a job owns numbered items; a finished item is never handed out again."""

    async def create_job(self, kind: str, name: str, items: Sequence[dict[str, Any]],
                         spec: dict[str, Any] | None = None, source_path: str | None = None) -> Job:
        """Create a 'queued' job with one pending item per request dict, all in one transaction.

        Item `idx` is the position in `items`; `custom_id` is taken from each dict's "custom_id" key.
        Raises ValueError for an unknown kind, TypeError for a non-dict item, StorageError.
        """
        if kind not in JOB_KINDS:
            raise ValueError(f"kind: must be one of {', '.join(JOB_KINDS)}, not {kind!r}")
        rows = []
        for idx, item in enumerate(items):
            if not isinstance(item, dict):
                raise TypeError(f"items[{idx}]: must be a dict, not {type(item).__name__}")
            custom_id = item.get("custom_id")
            rows.append((idx, None if custom_id is None else str(custom_id), to_json(item)))
        stamp = now()
        async with self._write():
            _, job_id = await self._run(
                "INSERT INTO job (kind, name, status, source_path, spec, total_items, created_at, updated_at) "
                "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
                (kind, name, source_path, to_json(spec or {}), len(rows), stamp, stamp))
            await self._run_many(
                f"INSERT INTO job_item (job_id, idx, custom_id, request) VALUES ({job_id}, ?, ?, ?)", rows)
        return await self._require_job(job_id)

    async def get_job(self, job_id: int) -> Job | None:
        """The job with its progress counts, or None. Raises StorageError."""
        row = await self._fetchone(_JOB_SELECT + " WHERE j.id = ?", (job_id,))
        return None if row is None else job_from_row(row)

    async def _require_job(self, job_id: int | None) -> Job:
        job = None if job_id is None else await self.get_job(job_id)
        if job is None:
            raise NotFoundError(f"{self._path}: job {job_id} does not exist", self._path)
        return job

    async def list_jobs(self) -> list[Job]:
        """All jobs, newest first. Raises StorageError."""
        rows = await self._fetchall(_JOB_SELECT + " ORDER BY j.created_at DESC, j.id DESC")
        return [job_from_row(r) for r in rows]

    async def claim_job(self, job_id: int) -> Job | None:
        """Start running a queued job: one compare-and-swap from 'queued' to 'running', owned by this process
        (its pid and start time are recorded: while it lives, opening the store leaves the job running).

        Of several runners claiming the same job at once (on any connections, in any processes), exactly
        one gets the running job back; the others, and anyone claiming a job that is not queued, get None
        and must leave the job alone. Raises NotFoundError (no such job), StorageError.
        """
        owner_pid, owner_started = writers.this_process()  # see Store._recover
        async with self._write():
            count, _ = await self._run(
                "UPDATE job SET status = 'running', owner_pid = ?, owner_started = ?, updated_at = ? "
                "WHERE id = ? AND status = 'queued'", (owner_pid, owner_started, now(), job_id))
            if count == 0 and await self._fetchone("SELECT 1 FROM job WHERE id = ?", (job_id,)) is None:
                raise NotFoundError(f"{self._path}: job {job_id} does not exist", self._path)
        return await self._require_job(job_id) if count else None

    async def set_job_status(self, job_id: int, status: str) -> Job:
        """Set a job's status (any but 'running': a runner takes a job with `claim_job`).

        Raises ValueError (unknown status, or 'running'), NotFoundError, StorageError.
        """
        if status not in JOB_STATUSES:
            raise ValueError(f"status: must be one of {', '.join(JOB_STATUSES)}, not {status!r}")
        if status == "running":
            raise ValueError("status: a job starts running only through claim_job (which one runner wins)")
        async with self._write():
            count, _ = await self._run("UPDATE job SET status = ?, owner_pid = NULL, owner_started = NULL, "
                                       "updated_at = ? WHERE id = ?", (status, now(), job_id))
        if count == 0:
            raise NotFoundError(f"{self._path}: job {job_id} does not exist", self._path)
        return await self._require_job(job_id)

    async def delete_job(self, job_id: int) -> bool:
        """Delete a job and its items; False if it did not exist. Raises StorageError."""
        async with self._write():
            count, _ = await self._run("DELETE FROM job WHERE id = ?", (job_id,))
        return count > 0

    async def pending_items(self, job_id: int, limit: int | None = None) -> list[JobItem]:
        """The job's items not yet done or failed, by idx (at most `limit`). Raises StorageError."""
        sql = _ITEM_SELECT + " WHERE job_id = ? AND status = 'pending' ORDER BY idx"
        params: tuple[Any, ...] = (job_id,)
        if limit is not None:
            sql, params = sql + " LIMIT ?", (job_id, limit)
        return [item_from_row(r) for r in await self._fetchall(sql, params)]

    async def list_items(self, job_id: int) -> list[JobItem]:
        """All the job's items by idx, with results and errors (for writing an output file)."""
        rows = await self._fetchall(_ITEM_SELECT + " WHERE job_id = ? ORDER BY idx", (job_id,))
        return [item_from_row(r) for r in rows]

    async def _finish_item(self, item_id: int, status: str, result: str | None, error: str | None) -> bool:
        stamp = now()
        async with self._write():
            count, _ = await self._run(
                "UPDATE job_item SET status = ?, result = ?, error = ?, completed_at = ? "
                "WHERE id = ? AND status = 'pending'", (status, result, error, stamp, item_id))
            if count:
                await self._run("UPDATE job SET updated_at = ? WHERE id = (SELECT job_id FROM job_item "
                                "WHERE id = ?)", (stamp, item_id))
            elif await self._fetchone("SELECT 1 FROM job_item WHERE id = ?", (item_id,)) is None:
                raise NotFoundError(f"{self._path}: job item {item_id} does not exist", self._path)
        return count > 0

    async def complete_item(self, item_id: int, result: Any) -> bool:
        """Mark a pending item done with its (JSON) result; committed before returning.

        Returns False, changing nothing, if the item was already done or failed.
        Raises NotFoundError, TypeError (result not JSON), StorageError.
        """
        return await self._finish_item(item_id, "done", to_json(result), None)

    async def fail_item(self, item_id: int, error: str) -> bool:
        """Mark a pending item failed with an error message; like `complete_item`."""
        return await self._finish_item(item_id, "failed", None, str(error))

    async def retry_failed_items(self, job_id: int) -> int:
        """Put the job's failed items back to pending; returns how many. Raises StorageError."""
        async with self._write():
            count, _ = await self._run(
                "UPDATE job_item SET status = 'pending', error = NULL, completed_at = NULL "
                "WHERE job_id = ? AND status = 'failed'", (job_id,))
        return count

    async def job_progress(self, job_id: int) -> tuple[int, int, int]:
        """(done, failed, total) item counts. Raises NotFoundError, StorageError."""
        job = await self._require_job(job_id)
        return job.done, job.failed, job.total
