"""`JobBar`: one job's line on the jobs screen: its name, a progress bar and `42% · ETA 1m 20s`.

The bar shows `JobProgress.fraction` (finished items plus the tokens of the items generating, over the
total; full for a done job) and takes the job's status as a class (`-running`, `-done`, `-failed`,
`-paused`, `-cancelled`, `-queued`) for its colour. Its parts are made in `__init__`, so `show()` works
before the widget is mounted: a bar added to the screen shows its progress from its first frame.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar

from ...jobs import JobProgress, format_duration

STATUSES = ("queued", "running", "paused", "done", "failed", "cancelled")


def progress_text(p: JobProgress) -> str:
    """`42% · ETA 1m 20s` while running (the ETA once it is known), else `100% · done`, `40% · paused`."""
    if p.status != "running":
        return f"{p.percent}% · {p.status}"
    return f"{p.percent}% · ETA {format_duration(p.eta_s)}" if p.eta_s is not None else f"{p.percent}%"


class JobBar(Horizontal):
    """A job's name, progress bar and progress text.

    Args:
        label: the job's name as shown (`#3 summaries`).
        progress: its progress now.
        **kwargs: as `Horizontal`'s (`id`).
    """

    DEFAULT_CSS = """
    JobBar { height: 1; }
    JobBar > .job-name { width: 24; }
    JobBar > ProgressBar { width: 1fr; }
    JobBar Bar { width: 1fr; }
    JobBar > .job-progress { width: 20; padding-left: 1; color: $text-muted; }
    JobBar.-failed Bar > .bar--bar, JobBar.-failed Bar > .bar--complete { color: $error; }
    JobBar.-paused Bar > .bar--bar, JobBar.-queued Bar > .bar--bar { color: $warning; }
    JobBar.-cancelled Bar > .bar--bar, JobBar.-cancelled Bar > .bar--complete { color: $text-muted; }
    """

    def __init__(self, label: str, progress: JobProgress, **kwargs) -> None:
        super().__init__(**kwargs)
        self._name = Label(label, markup=False, classes="job-name")
        self.bar = ProgressBar(total=1.0, show_percentage=False, show_eta=False)
        self._text = Label("", markup=False, classes="job-progress")
        self.progress: JobProgress | None = None
        self.show(progress)

    def compose(self) -> ComposeResult:
        yield self._name
        yield self.bar
        yield self._text

    def show(self, progress: JobProgress) -> None:
        """Show this progress (a no-op when nothing shown changes)."""
        if progress == self.progress:
            return
        self.progress = progress
        self.bar.update(total=1.0, progress=progress.fraction)
        self._text.update(progress_text(progress))
        for status in STATUSES:
            self.set_class(progress.status == status, f"-{status}")
