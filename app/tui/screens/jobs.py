"""The jobs screen (F9): every background job with its progress; submit, pause, resume, cancel, view and
export results, open a transcript.

The app's `JobRunner` runs the queue while the TUI is open (once the model is loaded); the screen is handed
it, shows the store's jobs (read every `REFRESH_S`) merged with the runner's live `JobProgress` (and the
`JobProgressed` messages the app posts to the active screen; the newest snapshot wins), and changes job
statuses through the runner. A job's bar counts finished items and the tokens of the items generating
(`JobProgress.fraction`), so it moves while long items generate. Opening an agent task's transcript dismisses
the screen with the transcript's chat id.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from storage import Job, Store

from ...jobs import ExportSummary, JobProgress, JobRunner, format_duration, submit_job
from ..messages import JobProgressed
from ..widgets.job_bar import JobBar
from .confirm import ConfirmScreen
from .help import APP_KEYS, HelpScreen, binding_rows
from .job_file_picker import JobFilePicker
from .job_results import JobResultsScreen, export_prompt

COLUMNS = (("id", "id"), ("kind", "kind"), ("name", "name"), ("status", "status"), ("done/failed/total", "items"),
           ("tok/s", "rate"), ("ETA", "eta"))
REFRESH_S = 1.0
UNKNOWN = "—"


def job_cells(job: Job, p: JobProgress) -> tuple[Text, ...]:
    """The table cells of a job shown with progress `p` (the rate and ETA only while it runs)."""
    running = p.status == "running"
    rate = f"{p.tokens_per_s:.1f}" if running else UNKNOWN
    eta = format_duration(p.eta_s) if running and p.eta_s is not None else UNKNOWN
    return (Text(str(job.id), justify="right"), Text(job.kind), Text(job.name), Text(p.status),
            Text(f"{p.done}/{p.failed}/{p.total}", justify="right"), Text(rate, justify="right"),
            Text(eta, justify="right"))


class JobsScreen(Screen):
    """Every job: a table (id, kind, name, status, items, tok/s, ETA) and a progress bar per job.

    Args:
        store: the open store holding the jobs.
        runner: the app's job runner (pause, resume and cancel go through it; its live progress is shown).
    Dismissed with: the chat id of an agent task's transcript to open, or None.
    """

    DEFAULT_CSS = """
    JobsScreen #jobs-table { height: 1fr; border: round $primary 60%; }
    JobsScreen #job-bars { height: auto; max-height: 40%; border: round $primary 60%; }
    JobsScreen #jobs-empty { color: $text-muted; padding: 0 1; }
    """

    BINDINGS = [
        Binding("escape,f9", "close", "Back", tooltip="Back to the chats"),
        Binding("s", "submit", "Submit", tooltip="Submit a job file: type its path or pick it "
                                                 "(.jsonl batch, .json/.yaml agent task)"),
        Binding("p", "pause", "Pause", tooltip="Pause the selected job"),
        Binding("r", "resume", "Resume", tooltip="Resume the selected job (a failed one retries its failures)"),
        Binding("x", "cancel_job", "Cancel", tooltip="Cancel the selected job (asks first)"),
        Binding("v", "results", "View", tooltip="View the selected job's items and their outputs"),
        Binding("e", "export", "Export", tooltip="Export a batch job's results to a JSONL file "
                                                 "(as `baton jobs export`)"),
        Binding("enter", "open", "Open", show=False,
                tooltip="Open an agent task's transcript chat, or a batch job's results"),
        Binding("f1", "help", "Help", show=False, tooltip="Show the keys"),
    ]

    def __init__(self, store: Store, runner: JobRunner) -> None:
        super().__init__()
        self.store = store
        self.runner = runner
        self.jobs: dict[int, Job] = {}
        self.live: dict[int, JobProgress] = {}
        self.bars: dict[int, JobBar] = {}
        self.folder = Path.cwd()  # where the file picker and the export dialog start (then: the last used)

    def compose(self) -> ComposeResult:
        table: DataTable = DataTable(id="jobs-table", cursor_type="row", zebra_stripes=True)
        table.border_title = "Background jobs"
        yield table
        with VerticalScroll(id="job-bars") as bars:
            bars.border_title = "Progress"
            yield Static("No jobs yet: press s to submit a job file", id="jobs-empty")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#jobs-table", DataTable)
        for header, key in COLUMNS:
            table.add_column(header, key=key)
        table.focus()
        self.reload()
        self.set_interval(REFRESH_S, self.reload)

    # ------------------------------------------------------------------------------ data
    def reload(self) -> None:
        """Read the jobs from the store again (in a worker)."""
        # Its own group: `exclusive` cancels the previous refresh only, never a submit or a status change.
        self.run_worker(self._reload, name="read jobs", group="jobs-view", exclusive=True, exit_on_error=False)

    async def _reload(self) -> None:
        jobs = await self.store.list_jobs()
        for job in jobs:  # the runner's counts are ahead of the store's (rates, ETA)
            live = self.runner.progress(job.id)
            if live is not None:
                self._take(live)
            elif job.status != "running":
                self.live.pop(job.id, None)
        self.show_jobs(jobs)

    def _take(self, progress: JobProgress) -> bool:
        """Keep `progress` unless a newer snapshot of the job is kept already (a `JobProgressed` posted
        before a refresh read the runner arrives after it). Returns whether it was kept."""
        kept = self.live.get(progress.job_id)
        if kept is not None and kept.taken > progress.taken:
            return False
        self.live[progress.job_id] = progress
        return True

    def progress_of(self, job: Job) -> JobProgress:
        """What to show for a job: the runner's live progress, unless the store has moved on from running."""
        live = self.live.get(job.id)
        if live is None or (job.status != "running" and live.status == "running"):
            return JobProgress.of(job)  # not running here, or finished / paused since
        return live

    @on(JobProgressed)
    def _progressed(self, event: JobProgressed) -> None:
        self.show_progress(event.progress)

    def show_progress(self, progress: JobProgress) -> None:
        """Show a running job's latest progress."""
        if not self._take(progress):
            return
        job = self.jobs.get(progress.job_id)
        if job is None:
            self.reload()
        else:
            self._show_job(job)

    def show_jobs(self, jobs: list[Job]) -> None:
        """Show these jobs (newest first), keeping the selected one selected."""
        table = self.query_one("#jobs-table", DataTable)
        selected = self.selected_job_id()
        keys = [str(j.id) for j in jobs]
        self.jobs = {j.id: j for j in jobs}
        if keys != [key.value for key in table.rows]:  # jobs added or deleted
            table.clear()
            for job in jobs:
                table.add_row(*job_cells(job, self.progress_of(job)), key=str(job.id))
            if selected in self.jobs:
                table.move_cursor(row=keys.index(str(selected)))
            self._rebuild_bars(jobs)
        for job in jobs:
            self._show_job(job)

    def _rebuild_bars(self, jobs: list[Job]) -> None:
        box = self.query_one("#job-bars", VerticalScroll)
        self.query_one("#jobs-empty").display = not jobs
        box.query(JobBar).remove()
        self.bars = {j.id: JobBar(f"#{j.id} {j.name}", self.progress_of(j)) for j in jobs}
        box.mount_all(self.bars.values())

    def _show_job(self, job: Job) -> None:
        p = self.progress_of(job)
        table = self.query_one("#jobs-table", DataTable)
        key = str(job.id)
        if key in table.rows:
            for (_, column), cell in zip(COLUMNS, job_cells(job, p)):
                if table.get_cell(key, column) != cell:
                    table.update_cell(key, column, cell)
        if (bar := self.bars.get(job.id)) is not None:
            bar.show(p)

    def selected_job_id(self) -> int | None:
        """The job under the table's cursor."""
        table = self.query_one("#jobs-table", DataTable)
        if not table.row_count:
            return None
        return int(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def select_job(self, job_id: int) -> None:
        """Put the table's cursor on a job."""
        table = self.query_one("#jobs-table", DataTable)
        table.move_cursor(row=table.get_row_index(str(job_id)))

    def _selected(self) -> Job | None:
        job = self.jobs.get(self.selected_job_id() or -1)
        if job is None:
            self.notify("No job selected: press s to submit a job file", severity="warning")
        return job

    # ------------------------------------------------------------------------------ actions
    def action_close(self) -> None:
        """Back to the chats."""
        self.dismiss()

    def action_help(self) -> None:
        """The keys of the jobs and results screens."""
        self.app.push_screen(HelpScreen([("Jobs screen", binding_rows(self.BINDINGS)),
                                         ("Results screen (V)", binding_rows(JobResultsScreen.BINDINGS)),
                                         ("Everywhere", APP_KEYS)]))

    def action_submit(self) -> None:
        """Type or pick a job file and submit it."""
        self.app.push_screen(JobFilePicker(self.folder, lambda path: submit_job(self.store, path)),
                             lambda job: job and self._submitted(job))

    def _submitted(self, job: Job) -> None:
        self.notify(f"job {job.id} “{job.name}”: {job.total} items queued", title="Job submitted")
        if job.source_path:
            self.folder = Path(job.source_path).parent

        async def show() -> None:
            await self._reload()
            self.select_job(job.id)
        self.run_worker(show(), name="show the submitted job", group="store", exit_on_error=False)

    def action_pause(self) -> None:
        """Pause the selected job."""
        if job := self._selected():
            self._change(self.runner.pause(job.id))

    def action_resume(self) -> None:
        """Resume the selected job."""
        if job := self._selected():
            self._change(self.runner.resume(job.id))

    def action_cancel_job(self) -> None:
        """Cancel the selected job, after a confirmation."""
        if job := self._selected():
            question = f"Cancel job {job.id} “{job.name}”? Its pending items will never run."
            self.app.push_screen(ConfirmScreen(question, "Cancel job"), lambda yes: yes and self.cancel(job.id))

    def cancel(self, job_id: int) -> None:
        """Cancel a job (no question asked)."""
        self._change(self.runner.cancel(job_id))

    def _change(self, change) -> None:
        async def work() -> None:
            try:
                await change
            except ValueError as exc:  # e.g. pausing a done job
                self.notify(str(exc), severity="warning")
            await self._reload()
        self.run_worker(work(), name="change job", group="store", exit_on_error=False)

    def action_results(self) -> None:
        """Show the selected job's items and their outputs."""
        if job := self._selected():
            self.app.push_screen(JobResultsScreen(self.store, job, self.folder), self._use_folder)

    def _use_folder(self, folder: Path | None) -> None:
        if folder is not None:
            self.folder = folder

    def action_export(self) -> None:
        """Write the selected batch job's results to a JSONL file the user names."""
        if (job := self._selected()) is None:
            return
        if job.kind != "batch":
            self.notify(f"job {job.id} is an agent task: its results are its transcript chat (Enter opens it)",
                        severity="warning")
            return
        self.app.push_screen(export_prompt(self.store, job, self.folder), self._exported)

    def _exported(self, summary: ExportSummary | None) -> None:
        if summary is not None:
            self.folder = summary.path.parent
            self.notify(summary.line(), title="Results exported")

    @on(DataTable.RowSelected, "#jobs-table")
    def _row_chosen(self) -> None:
        self.action_open()

    def action_open(self) -> None:
        """Open the selected agent task's transcript chat on the chat screen, or a batch job's results."""
        if (job := self._selected()) is None:
            return
        chat_id = job.spec.get("chat_id")
        if job.kind != "agent" or chat_id is None:
            self.action_results()
            return
        self.dismiss(chat_id)  # the chat screen opens it
