"""The help screen: every key, grouped by where it works."""

from __future__ import annotations

from typing import Iterable

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

Section = tuple[str, list[tuple[str, str]]]
KEY_WIDTH = 22  # the most the key column takes; longer keys wrap at their spaces
PROMPT_KEYS = [("Enter", "Send the message"), ("Shift+Enter / Ctrl+J", "New line"),
               ("Up / Down", "On the first / last line: your earlier messages in this chat, then back to the draft"),
               ("Esc", "Leave edit mode (else: stop the answer)")]
MESSAGE_KEYS = [("Tab / click", "Focus a message"), ("C", "Copy the message"),
                ("Y", "Copy its first code block"), ("E", "Edit one of yours and resend it (later messages go)"),
                ("[ / ] or ← / →", "Page through an answer's alternatives (Ctrl+R keeps the old answer)")]
JOB_KEYS = [("S", "Submit a job file: type its path (Tab completes) or pick it in the tree"),
            ("P / R", "Pause / resume the job"), ("X", "Cancel the job (asks first)"),
            ("V", "View the job's items and their outputs"),
            ("E", "Export a batch job's results to a JSONL file (as `baton jobs export`)"),
            ("Enter", "Open an agent task's transcript chat, or a batch job's results"),
            ("F1", "The keys of the jobs screen"), ("Esc / F9", "Back to the chats")]
APP_KEYS = [("Ctrl+P", "Command palette: every action, and Theme"), ("Ctrl+Q", "Quit")]

INTRO = ("Many chats can answer at the same time: send in one, switch to another (they keep streaming), "
         "and open the live panel to watch the batch. Everything is saved as it streams. "
         "Ctrl+P opens the command palette: every action, and Theme to change the colours.")


def key_label(keys: str) -> str:
    """`ctrl+n,f5` -> `Ctrl+N / F5`."""
    def one(key: str) -> str:
        """One key: `ctrl+n` -> `Ctrl+N`."""
        named = {"question_mark": "?", "escape": "Esc", "enter": "Enter", "tab": "Tab"}
        if key in named:
            return named[key]
        parts = {"pageup": "PgUp", "pagedown": "PgDn"}
        return "+".join(part.upper() if len(part) == 1 else parts.get(part, part.title()) for part in key.split("+"))
    return " / ".join(one(k.strip()) for k in keys.split(","))


def binding_rows(bindings: Iterable[Binding | tuple]) -> list[tuple[str, str]]:
    """`(keys, description)` rows of the bindings that have a description."""
    rows = []
    for b in bindings:
        if isinstance(b, Binding) and b.description:
            rows.append((key_label(b.key), b.tooltip or b.description))
    return rows


def key_table(rows: list[tuple[str, str]], key_width: int) -> Table:
    """Keys in a column `key_width` wide and what they do beside them, wrapped to the width there is (a
    `DataTable` cut long descriptions and scrolled sideways)."""
    table = Table.grid(padding=(0, 2), expand=True)
    table.add_column("keys", style="bold", width=key_width)
    table.add_column("action", ratio=1)
    for keys, what in rows:
        table.add_row(keys, what)
    return table


class HelpScreen(ModalScreen[None]):
    """Lists the keys; Esc, F1, ? or q closes it; the arrows, Page Up/Down, Home and End scroll it.

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
            key_width = min(KEY_WIDTH, max(len(keys) for keys, _ in self.rows()))
            for heading, rows in self._sections:
                yield Label(heading, classes="help-heading")
                yield Static(key_table(rows, key_width), classes="help-keys")

    def on_mount(self) -> None:
        """Focus the text, so the scrolling keys scroll it."""
        self.query_one("#help-dialog").focus()

    def rows(self) -> list[tuple[str, str]]:
        """Every `(keys, what they do)` row shown."""
        return [row for _, rows in self._sections for row in rows]
