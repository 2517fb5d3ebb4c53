"""The OpenAI Files and Batch API objects of `baton serve`, and their ids, on Baton's store and job queue.

- An uploaded file is a row of the store's `file` table: id `file-<n>` (`File`: `object: "file"`, bytes,
  created_at, filename, purpose, `status: "processed"`).
- A batch is a batch job (`app.jobs`) created from an uploaded file: id `batch_<job id>`; its job spec holds
  the Batch API's fields under `"batch"` (`input_file_id`, `endpoint`, `completion_window`, `metadata`).
  Only jobs created through the API are batches (a job from `baton jobs submit` has no input file).
- A finished batch's output and error files are made from its items when read, never stored twice:
  `file-<batch id>-output` (the success lines, in input order) and `file-<batch id>-errors` (failed lines,
  and for a cancelled batch the lines it never ran, code `batch_cancelled`), purpose `batch_output`.

Status: a job `queued`, `running` or `paused` (with `baton jobs pause`) is an `in_progress` batch; `done` is
`completed` (also when some lines failed: they are in the error file, as at OpenAI); `failed` is `failed`;
`cancelled` is `cancelled`. `request_counts` are the job's item counts. Timestamps are Unix seconds; a final
batch's `completed_at` / `cancelled_at` / `failed_at` is the job's last update.
"""

from __future__ import annotations

import re
from typing import Any

from storage import Job, JobItem, StoredFile

from ..chat.batch_file import dumps_line, error_line
from ..jobs.batch_job import split_error
from .errors import APIError

BATCH_KEY = "batch"
_FILE_ID = re.compile(r"file-(\d+)")
_OUTPUT_ID = re.compile(r"file-batch_(\d+)-(output|errors)")
_BATCH_ID = re.compile(r"batch_(\d+)")
STATUS = {"queued": "in_progress", "running": "in_progress", "paused": "in_progress", "done": "completed",
          "failed": "failed", "cancelled": "cancelled"}
FINAL_AT = {"completed": "completed_at", "failed": "failed_at", "cancelled": "cancelled_at"}


def file_id(n: int) -> str:
    return f"file-{n}"


def batch_id(job_id: int) -> str:
    return f"batch_{job_id}"


def output_file_id(job_id: int, kind: str) -> str:
    """The id of a batch's `output` or `errors` file."""
    return f"file-{batch_id(job_id)}-{kind}"


def parse_file_id(text: str) -> tuple[str, int]:
    """`("input", file n)` for an uploaded file's id, `("output" | "errors", job id)` for a batch's.

    Raises:
        APIError: 404 for an id of neither form.
    """
    if m := _FILE_ID.fullmatch(text):
        return "input", int(m.group(1))
    if m := _OUTPUT_ID.fullmatch(text):
        return m.group(2), int(m.group(1))
    raise no_file(text)


def parse_batch_id(text: str) -> int:
    """The job id of a batch id. Raises APIError: 404 for another form."""
    if m := _BATCH_ID.fullmatch(text):
        return int(m.group(1))
    raise no_batch(text)


def no_file(text: str) -> APIError:
    return APIError(404, f"no such file: {text!r}", code="not_found", param="file_id")


def no_batch(text: str) -> APIError:
    return APIError(404, f"no such batch: {text!r}", code="not_found", param="batch_id")


def is_batch(job: Job | None) -> bool:
    """Whether a job was created through the Batch API."""
    return job is not None and job.kind == "batch" and isinstance(job.spec.get(BATCH_KEY), dict)


def file_object(stored: StoredFile) -> dict[str, Any]:
    """An uploaded file as OpenAI's `File` object."""
    return {"id": file_id(stored.id), "object": "file", "bytes": stored.bytes,
            "created_at": int(stored.created_at.timestamp()), "filename": stored.filename,
            "purpose": stored.purpose, "status": "processed"}


def output_file_object(job: Job, kind: str, size: int) -> dict[str, Any]:
    """A batch's `output` or `errors` file as OpenAI's `File` object (`size` in bytes)."""
    return {"id": output_file_id(job.id, kind), "object": "file", "bytes": size,
            "created_at": int(job.updated_at.timestamp()), "filename": f"{batch_id(job.id)}_{kind}.jsonl",
            "purpose": "batch_output", "status": "processed"}


def output_kinds(job: Job) -> list[str]:
    """The files a batch has: none until it is final; then `output` if a line succeeded, `errors` if one
    failed or (cancelled) never ran."""
    if STATUS[job.status] not in FINAL_AT:
        return []
    kinds = ["output"] if job.done else []
    if job.failed or (job.status == "cancelled" and job.pending):
        kinds.append("errors")
    return kinds


def batch_object(job: Job, model: str) -> dict[str, Any]:
    """A batch job as OpenAI's `Batch` object."""
    spec, status = job.spec[BATCH_KEY], STATUS[job.status]
    created = int(job.created_at.timestamp())
    kinds = output_kinds(job)
    batch: dict[str, Any] = {
        "id": batch_id(job.id), "object": "batch", "endpoint": spec["endpoint"], "model": model,
        "errors": None, "input_file_id": spec["input_file_id"], "completion_window": spec["completion_window"],
        "status": status, "output_file_id": output_file_id(job.id, "output") if "output" in kinds else None,
        "error_file_id": output_file_id(job.id, "errors") if "errors" in kinds else None,
        "created_at": created, "in_progress_at": created, "expires_at": None, "finalizing_at": None,
        "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
        "request_counts": {"total": job.total, "completed": job.done, "failed": job.failed},
        "metadata": spec.get("metadata"),
    }
    if status in FINAL_AT:
        batch[FINAL_AT[status]] = int(job.updated_at.timestamp())
    return batch


def output_content(job: Job, items: list[JobItem], kind: str) -> bytes:
    """The JSONL bytes of a batch's `output` file (success lines) or `errors` file, in input order."""
    lines = []
    for item in items:
        if kind == "output" and item.status == "done":
            lines.append(item.result)
        elif kind == "errors" and item.status == "failed":
            lines.append(error_line(item.custom_id, *split_error(item.error)))
        elif kind == "errors" and item.status == "pending" and job.status == "cancelled":
            lines.append(error_line(item.custom_id, "batch_cancelled", "not run: the batch was cancelled"))
    return "".join(dumps_line(line) + "\n" for line in lines).encode()
