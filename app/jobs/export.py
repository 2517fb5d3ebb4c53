"""Exporting a batch job's results: its OpenAI Batch output file, written atomically (`baton jobs export`,
the TUI's jobs and results screens).

One line per input line, in input order (`control.export_lines`): a done item's output line, a failed item's
error line, an item not run yet an error line with code `not_run`.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from storage import Job, Store

from ..chat.batch_file import dumps_line
from .atomic_output import atomic_output
from .control import export_lines


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote: `lines` lines to `path`, of which `ok` answers, `failed` and `not_run` errors."""

    path: Path
    lines: int
    ok: int
    failed: int
    not_run: int

    def line(self) -> str:
        """`wrote 5 lines to out.jsonl (4 ok, 1 failed, 0 not run)`."""
        return (f"wrote {self.lines} lines to {self.path} ({self.ok} ok, {self.failed} failed, "
                f"{self.not_run} not run)")


async def export_job(store: Store, job_id: int, path: str | Path) -> ExportSummary:
    """Write a batch job's OpenAI Batch output file at `path` (atomically: whole or not at all; an existing
    file is replaced).

    Raises:
        NotFoundError: no such job. ValueError: an agent task (its transcript is a chat).
        OutputFileError (a ValueError): `path` is a folder, or its folder is missing or cannot be written.
        OSError: writing failed (e.g. the disk is full; nothing is left behind). StorageError.
    """
    path = Path(path)
    lines = await export_lines(store, job_id)
    await asyncio.to_thread(_write, path, lines)
    ok = sum(1 for x in lines if x["error"] is None)
    not_run = sum(1 for x in lines if x["error"] is not None and x["error"]["code"] == "not_run")
    return ExportSummary(path, len(lines), ok, len(lines) - ok - not_run, not_run)


def default_export_path(folder: Path, job: Job) -> Path:
    """`<folder>/job-<id>-<name>.results.jsonl`, the name reduced to letters, digits, `-` and `_`."""
    slug = re.sub(r"[^\w-]+", "-", job.name).strip("-")[:40] or "job"
    return folder / f"job-{job.id}-{slug}.results.jsonl"


def _write(path: Path, lines: list[dict]) -> None:
    with atomic_output(path) as out:
        for line in lines:
            out.write(dumps_line(line) + "\n")
