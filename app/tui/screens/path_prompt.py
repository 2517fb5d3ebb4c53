"""Ask for a file path and act on it in the dialog: an error keeps the dialog open with what was typed.

    PathPromptScreen("Export job 3 to", "~/out.jsonl", act=lambda path: export_job(store, 3, path))

Enter runs `act(path)` (a coroutine) in a worker; its result dismisses the dialog, and a `ValueError`,
`OSError` or `StorageError` it raises is shown under the input, so the user can correct the path. Esc
cancels (dismissed with None).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Generic, TypeVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Input, Static

from storage import StorageError

from ..widgets.path_input import PathInput

T = TypeVar("T")
HINT = "Enter accepts · Tab or → completes · Esc cancels"


class PathPromptScreen(ModalScreen[T | None], Generic[T]):
    """A path input, a line for errors, and what a subclass adds under them (`compose_more`).

    Args:
        title: what the path is for (the dialog's title).
        value: the initial text (the cursor goes to its end).
        act: run with the path typed (`~` expanded) when Enter is pressed; dismisses with its result.
        hint: the keys, shown on the dialog's bottom border.
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    PathPromptScreen .path-dialog { width: 90; }
    PathPromptScreen #path-error { color: $error; text-style: bold; display: none; }
    PathPromptScreen #path-error.-shown { display: block; }
    PathPromptScreen #path-error.-busy { color: $text-muted; text-style: italic; }
    """

    def __init__(self, title: str, value: str, act: Callable[[Path], Awaitable[T]], hint: str = HINT) -> None:
        super().__init__(classes="dialog-screen")
        self._title = title
        self._value = value
        self._act = act
        self._hint = hint
        self.busy = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog path-dialog") as box:
            box.border_title = self._title
            box.border_subtitle = self._hint
            yield PathInput(self._value, id="path-input")
            yield Static("", id="path-error", markup=False)
            yield from self.compose_more()

    def compose_more(self) -> Iterable[Widget]:
        """Widgets under the input (none here)."""
        return ()

    def on_mount(self) -> None:
        path_input = self.query_one(PathInput)
        path_input.focus()
        path_input.cursor_position = len(path_input.value)

    @property
    def error(self) -> str | None:
        """The error shown, if any."""
        line = self.query_one("#path-error", Static)
        return str(line.content) if line.has_class("-shown") and not line.has_class("-busy") else None

    def show_error(self, message: str | None, busy: bool = False) -> None:
        """Show `message` under the input (None hides it); `busy` shows it as a note rather than an error."""
        line = self.query_one("#path-error", Static)
        line.update(message or "")
        line.set_class(message is not None, "-shown")
        line.set_class(busy, "-busy")

    @on(Input.Submitted, "#path-input")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if not event.value.strip():
            self.show_error("Type a path first (Esc cancels)")
            return
        self.accept(self.query_one(PathInput).path)

    def accept(self, path: Path) -> None:
        """Run `act(path)`; ignored while an earlier one runs."""
        if self.busy:
            return
        self.busy = True
        self.show_error(f"Working on {path} …", busy=True)
        self.run_worker(self._run(path), name="path prompt", group="path-prompt", exit_on_error=False)

    async def _run(self, path: Path) -> None:
        try:
            result = await self._act(path)
        except (ValueError, OSError, StorageError) as exc:
            self.show_error(str(exc))
            self.query_one(PathInput).focus()
            return
        finally:
            self.busy = False
        self.dismiss(result)

    def action_cancel(self) -> None:
        """Close without acting."""
        self.dismiss(None)
