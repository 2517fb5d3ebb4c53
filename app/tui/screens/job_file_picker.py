"""Choosing a job file to submit: type its path (with completion) or pick it in a tree of folders.

The tree shows the folder of the path typed (it follows the typing; it starts at the folder the jobs screen
hands in). Enter on a folder opens it in the tree; Enter on a file submits it, and a file that cannot be
submitted (missing, unreadable, not a job file, a batch file without a valid request) leaves the dialog
open with the reason under the path and the path as typed. The dialog is dismissed with the submitted job.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from textual import on
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import DirectoryTree, Input

from storage import Job

from ..widgets.path_input import PathInput, expand
from .path_prompt import PathPromptScreen

JOB_FILE_SUFFIXES = (".jsonl", ".json", ".yaml", ".yml")
HINT = "Enter submits · Tab completes · ↓ the tree · Esc cancels"


class JobFileTree(DirectoryTree):
    """A directory tree showing folders and job files only (hidden entries left out)."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        return [p for p in paths if not p.name.startswith(".")
                and (p.is_dir() or p.suffix.lower() in JOB_FILE_SUFFIXES)]


class JobFilePicker(PathPromptScreen[Job]):
    """Type or pick a job file (`.jsonl` batch, `.json`/`.yaml` agent task) and submit it.

    Args:
        folder: where the path and the tree start.
        submit: stores the file as a job (`app.jobs.submit_job`); its `ValueError` / `StorageError` is shown
            in the dialog.
    """

    BINDINGS = [Binding("down", "focus_tree", "Pick in the tree", show=False)]
    DEFAULT_CSS = """
    JobFilePicker .path-dialog { height: 90%; }
    JobFilePicker #job-files { height: 1fr; min-height: 3; border: round $primary 40%; }
    """

    def __init__(self, folder: str | Path, submit: Callable[[Path], Awaitable[Job]]) -> None:
        self._folder = Path(folder)
        super().__init__("Submit a job file", _folder_text(self._folder), submit, hint=HINT)
        self._picked: str | None = None  # the text a pick in the tree put in the input

    def compose_more(self) -> Iterable[Widget]:
        yield JobFileTree(self._folder, id="job-files")

    @property
    def tree(self) -> JobFileTree:
        return self.query_one(JobFileTree)

    def action_focus_tree(self) -> None:
        """↓ from the path: move to the tree (keys there move in the tree)."""
        self.tree.focus()

    def accept(self, path: Path) -> None:
        """A folder opens in the tree; a file is submitted."""
        if path.is_dir():
            self.show_folder(path)
            self.query_one(PathInput).value = _folder_text(path)
            self.query_one(PathInput).cursor_position = len(self.query_one(PathInput).value)
            self.show_error(None)
            return
        super().accept(path)

    def show_folder(self, folder: Path) -> None:
        """Root the tree at `folder` (when it is not there already)."""
        if Path(self.tree.path) != folder:
            self.tree.path = folder

    @on(Input.Changed, "#path-input")
    def _typed(self, event: Input.Changed) -> None:
        """The tree follows the folder of what is typed (not of a file picked in the tree)."""
        if event.value == self._picked:
            return
        if not self.busy:
            self.show_error(None)
        text = event.value.strip()
        folder = expand(text) if text.endswith(os.sep) else expand(text).parent
        if text and folder.is_dir():
            self.show_folder(folder)

    @on(DirectoryTree.FileSelected, "#job-files")
    def _picked_in_tree(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        path_input = self.query_one(PathInput)
        self._picked = path_input.value = str(event.path)
        self.accept(Path(event.path))


def _folder_text(folder: Path) -> str:
    """A folder as the input shows it: ending in the separator, so typing goes on with a name in it."""
    text = str(folder)
    return text if text.endswith(os.sep) else text + os.sep
