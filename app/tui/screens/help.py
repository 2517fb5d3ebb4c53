"""The help screen: every key, grouped by where it works."""

from __future__ import annotations

from typing import Iterable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Static

Section = tuple[str, list[tuple[str, str]]]
KEY_WIDTH = 22
PROMPT_KEYS = [("Enter", "Send the message"), ("Shift+Enter / Ctrl+J", "New line"),
               ("Esc", "Leave edit mode (else: stop the answer)")]
MESSAGE_KEYS = [("Tab / click", "Focus a message"), ("C", "Copy the message"),
                ("Y", "Copy its first code block"), ("E", "Edit one of yours and resend it (later messages go)")]
JOB_KEYS = [("S", "Submit a job file: type its path (Tab completes) or pick it in the tree"),
            ("P / R", "Pause / resume the job"), ("X", "Cancel the job (asks first)"),
            ("V", "View the job's items and their outputs"),
            ("E", "Export a batch job's results to a JSONL file (as `baton jobs export`)"),
            ("Enter", "Open an agent task's transcript chat, or a batch job's results"),
            ("F1", "The keys of the jobs screen"), ("Esc / F9", "Back to the chats")]
APP_KEYS = [("Ctrl+P", "Command palette: every action, and Change theme"), ("Ctrl+Q", "Quit")]

INTRO = ("Many chats can answer at the same time: send in one, switch to another (they keep streaming), "
         "and open the live panel to watch the batch. Everything is saved as it streams. "
         "Ctrl+P opens the command palette: every action, and Change theme.")


def key_label(keys: str) -> str:
    """`ctrl+n,f5` -> `Ctrl+N / F5`."""
    def one(key: str) -> str:
        """One key: `ctrl+n` -> `Ctrl+N`."""
        named = {"question_mark": "?", "escape": "Esc", "enter": "Enter", "tab": "Tab"}
        if key in named:
            return named[key]
        return "+".join(part.upper() if len(part) == 1 else part.title() for part in key.split("+"))
    return " / ".join(one(k.strip()) for k in keys.split(","))


def binding_rows(bindings: Iterable[Binding | tuple]) -> list[tuple[str, str]]:
    """`(keys, description)` rows of the bindings that have a description."""
    rows = []
    for b in bindings:
        if isinstance(b, Binding) and b.description:
            rows.append((key_label(b.key), b.tooltip or b.description))
    return rows


class HelpScreen(ModalScreen[None]):
    """Lists the keys; Esc, F1, ? or q closes it.

    Args:
        sections: `(heading, [(keys, what they do), ...])` in display order.
    """

    BINDINGS = [Binding("escape,f1,question_mark,q", "dismiss", "Close")]

    def __init__(self, sections: list[Section]) -> None:
        super().__init__(classes="dialog-screen")
        self._sections = sections

    @classmethod
    def for_bindings(cls, bindings: Iterable[Binding | tuple]) -> HelpScreen:
        """The help for a screen with these bindings (its chat keys), then the prompt, message and app keys."""
        return cls([("Chats", binding_rows(bindings)), ("Prompt", PROMPT_KEYS), ("Messages", MESSAGE_KEYS),
                    ("Jobs screen (F9)", JOB_KEYS), ("Everywhere", APP_KEYS)])

    def compose(self) -> ComposeResult:
        """An introduction, then one key table per section."""
        with VerticalScroll(classes="dialog", id="help-dialog") as box:
            box.border_title = "Help"
            box.border_subtitle = "Esc closes"
            yield Static(INTRO, classes="help-intro", markup=False)
            for heading, rows in self._sections:
                yield Label(heading, classes="help-heading")
                table: DataTable = DataTable(show_header=False, cursor_type="none", zebra_stripes=False,
                                             classes="help-keys")
                table.add_column("key", width=KEY_WIDTH)
                table.add_column("action")
                table.add_rows((Text(keys, style="bold"), what) for keys, what in rows)
                yield table

    def rows(self) -> list[tuple[str, str]]:
        """Every `(keys, what they do)` row shown."""
        return [row for _, rows in self._sections for row in rows]
