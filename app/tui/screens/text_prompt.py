"""Ask for one line of text in a modal dialog (a chat's new title, an export path)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label


class TextPromptScreen(ModalScreen[str | None]):
    """One labelled input; Enter (or OK) dismisses with the stripped text, Esc with None.

    Args:
        title: the question.
        value: the initial text.
        ok: the label of the accepting button.
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, value: str = "", ok: str = "OK") -> None:
        super().__init__(classes="dialog-screen")
        self._title = title
        self._value = value
        self._ok = ok

    def compose(self) -> ComposeResult:
        """The question, the input and two buttons."""
        with Vertical(classes="dialog", id="text-dialog"):
            yield Label(self._title, classes="dialog-question", markup=False)
            yield Input(self._value, id="text-input", select_on_focus=True)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Cancel", id="cancel")
                yield Button(self._ok, id="ok", variant="primary")

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def _accept(self) -> None:
        text = self.query_one(Input).value.strip()
        if not text:
            self.notify("Type something first (Esc cancels)", severity="warning")
            return
        self.dismiss(text)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        """Close without an answer."""
        self.dismiss(None)
