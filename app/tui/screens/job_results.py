"""A job's results: every item with its status and output, the selected one's text in full; export to JSONL.

The table lists the items in input order (`app.jobs.item_result`: label, status, tokens, the start of the
output or error); the text area under it shows the selected item's prompt and whole output, read-only (it
can be selected and copied). While the job runs, the list is read again when an item finishes
(`JobProgressed`; at most once a second). E exports a batch job's OpenAI Batch output file (`export_prompt`,
the format of `baton jobs export`).
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, TextArea

from storage import Job, Store

from ...jobs import ExportSummary, ItemResult, default_export_path, export_job, item_result
from ..messages import JobProgressed
from .path_prompt import PathPromptScreen

PREVIEW = 60  # characters of an output in the table
REFRESH_S = 1.0  # the most often the list is read again while the job runs


def export_prompt(store: Store, job: Job, folder: Path) -> PathPromptScreen[ExportSummary]:
    """The dialog that asks where to write a batch job's results (suggesting `folder`) and writes them."""
    return PathPromptScreen(f"Export job {job.id} “{job.name}” to (JSONL; an existing file is replaced)",
                            str(default_export_path(folder, job)),
                            lambda path: export_job(store, job.id, Path(os.path.abspath(path))),
                            hint="Enter writes · Tab or → completes · Esc cancels")


def preview(text: str, width: int = PREVIEW) -> str:
    """The start of a text on one line (`…` when cut)."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[:width - 1] + "…"


def detail(result: ItemResult) -> str:
    """The text area's text for an item: its prompt, then its output (or error, or that it has not run)."""
    body = result.text or ("(not run yet)" if result.status == "pending" else "(no text)")
    return f"› {result.prompt}\n\n{body}" if result.prompt else body


class JobResultsScreen(Screen[Path]):
    """One job's items and their outputs.

    Args:
        store: the open store.
        job: the job (read again with its items when shown).
        export_folder: where the export dialog suggests writing.
    Dismissed with: the folder of the last export (`export_folder` when there was none).
    """

    DEFAULT_CSS = """
    JobResultsScreen #results-table { height: 1fr; border: round $primary 60%; }
    JobResultsScreen #result-title { height: 1; padding: 0 1; color: $text-muted; }
    JobResultsScreen #result-text { height: 1fr; }
    """

    BINDINGS = [
        Binding("escape", "close", "Back", tooltip="Back to the jobs"),
        Binding("e", "export", "Export", tooltip="Export a batch job's results to a JSONL file (OpenAI Batch "
                                                 "output format, as `baton jobs export`)"),
    ]

    def __init__(self, store: Store, job: Job, export_folder: Path | None = None) -> None:
        super().__init__()
        self.store = store
        self.job = job
        self.export_folder = export_folder or Path.cwd()
        self.results: list[ItemResult] = []
        self._counts = (job.status, job.done, job.failed)
        self._stale = False  # an item finished since the list was read

    def compose(self) -> ComposeResult:
        table: DataTable = DataTable(id="results-table", cursor_type="row", zebra_stripes=True)
        table.border_title = self._title()
        yield table
        yield Label("", id="result-title", markup=False)
        yield TextArea("", id="result-text", read_only=True, soft_wrap=True, show_line_numbers=False)
        yield Footer()

    def _title(self) -> str:
        j = self.job
        return (f"Results of job {j.id} “{j.name}” ({j.kind}, {j.status}: {j.done} done, {j.failed} failed, "
                f"{j.total} items)")

    def on_mount(self) -> None:
        table = self.query_one("#results-table", DataTable)
        for header, key in (("#", "idx"), ("item", "label"), ("status", "status"), ("tokens", "tokens"),
                            ("output", "output")):
            table.add_column(header, key=key)
        table.focus()
        self.reload()
        self.set_interval(REFRESH_S, self._reload_if_stale)

    def _reload_if_stale(self) -> None:
        if self._stale:
            self._stale = False
            self.reload()

    def reload(self) -> None:
        """Read the job and its items again (in a worker)."""
        # the jobs screen's group: a store failure is notified as a "Storage error" (BatonApp.FAILURE_TITLES);
        # `exclusive` cancels only this screen's earlier read
        self.run_worker(self._reload, name="read results", group="jobs-view", exclusive=True, exit_on_error=False)

    async def _reload(self) -> None:
        job = await self.store.get_job(self.job.id)
        if job is None:
            self.notify(f"job {self.job.id} no longer exists", severity="warning")
            return
        items = await self.store.list_items(job.id)
        self.job = job
        self.show_results([item_result(job, item) for item in items])

    def show_results(self, results: list[ItemResult]) -> None:
        """List these results, keeping the cursor's row."""
        table = self.query_one("#results-table", DataTable)
        table.border_title = self._title()
        row = table.cursor_row
        self.results = results
        table.clear()
        for r in results:
            table.add_row(Text(str(r.idx), justify="right"), Text(preview(r.label, 24)), Text(r.status),
                          Text("" if r.tokens is None else str(r.tokens), justify="right"),
                          Text(preview(r.text)), key=str(r.idx))
        if results:
            table.move_cursor(row=min(max(row, 0), len(results) - 1))
            self._show_item(table.cursor_row)
        else:
            self.query_one("#result-title", Label).update("This job has no items.")

    @on(DataTable.RowHighlighted, "#results-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_item(event.cursor_row)

    def _show_item(self, row: int) -> None:
        if not 0 <= row < len(self.results):
            return
        result = self.results[row]
        self.query_one("#result-title", Label).update(f"#{result.idx} {result.label} · {result.summary}")
        text = detail(result)
        area = self.query_one("#result-text", TextArea)
        if area.text != text:
            area.load_text(text)

    @on(JobProgressed)
    def _progressed(self, event: JobProgressed) -> None:
        p = event.progress
        if p.job_id == self.job.id and (p.status, p.done, p.failed) != self._counts:
            self._counts = (p.status, p.done, p.failed)
            self._stale = True

    def action_close(self) -> None:
        """Back to the jobs."""
        self.dismiss(self.export_folder)

    def action_export(self) -> None:
        """Ask for a path and write the job's results there (a batch job's; an agent task's are its chat)."""
        if self.job.kind != "batch":
            self.notify(f"job {self.job.id} is an agent task: its results are its transcript chat "
                        "(Enter on the jobs screen opens it)", severity="warning")
            return
        self.app.push_screen(export_prompt(self.store, self.job, self.export_folder), self._exported)

    def _exported(self, summary: ExportSummary | None) -> None:
        if summary is not None:
            self.export_folder = summary.path.parent
            self.notify(summary.line(), title="Results exported")
