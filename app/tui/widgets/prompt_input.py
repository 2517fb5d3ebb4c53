"""The message box: Enter sends, Shift+Enter or Ctrl+J starts a new line; it can edit a sent message.

Every key it handles, bound ones included, is handled in the order it was typed: Textual 8.2.8's `TextArea`
inserts characters as their key reaches it, but runs its bound keys (Backspace, Delete, arrows, Home/End,
Ctrl+W...) only once the key has bubbled up to the app, so in a burst ("\\x7f\\x7fy.", a fast typist or tmux) the
characters were inserted first and the Backspaces then deleted them (issue #10.4;
docs/upstream/textual-textarea-keys.md). `_on_key` runs the prompt's own bindings where it inserts characters.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.message import Message
from textual.strip import Strip
from textual.widgets import TextArea

PLACEHOLDER = "Message (Enter sends · Shift+Enter / Ctrl+J new line)"
NEWLINE_KEYS = ("shift+enter", "ctrl+j")


class PromptInput(TextArea):
    """A multi-line prompt. Enter takes the text out at once and posts `Submitted` with it; the screen answers
    `sent()` (accepted) or `refused()` (the text comes back). Taking it out at Enter, not at the answer, keeps
    what the user types right after Enter: it used to be cleared with the sent text (issue #10.4).

    In edit mode (`begin_edit`) the submission names the message it replaces; Esc leaves edit mode.

    History (as oterm and shells): Up on the prompt's first line shows the user's previous message in the open
    chat (`set_history`), again and again back to the first; Down on the last line goes forward, and past the
    newest back to what was being typed. Elsewhere Up and Down move the cursor, so a multi-line prompt is edited
    as before; a recalled message is sent as it is, or edited first (edits to it are dropped by another Up/Down).
    """

    @dataclass
    class Submitted(Message):
        """The user pressed Enter on a non-blank prompt."""

        text: str
        editing: int | None  # the id of the message being edited, or None for a new message

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, soft_wrap=True, tab_behavior="focus", show_line_numbers=False,
                         highlight_cursor_line=False, placeholder=PLACEHOLDER, compact=True)
        self.editing: int | None = None
        self._unsent: list[str] = []  # submitted texts the screen has not answered yet, oldest first
        self._history: list[str] = []  # the open chat's user messages, oldest first
        self._recalled: int | None = None  # the index in `_history` shown now; None: the draft
        self._draft = ""  # what was typed before the first Up

    @property
    def pending(self) -> bool:
        """True while a submission waits for the screen's answer (`sent()` or `refused()`)."""
        return bool(self._unsent)

    def set_history(self, messages: list[str]) -> None:
        """The user's messages in the open chat, oldest first (Up recalls them, newest first)."""
        self._history = [m for i, m in enumerate(messages) if i == 0 or m != messages[i - 1]]
        self._recalled = None

    @property
    def recalled(self) -> int | None:
        """How many messages back the prompt shows (1: the last one sent), or None while it shows the draft."""
        return None if self._recalled is None else len(self._history) - self._recalled

    def _recall(self, step: int) -> bool:
        """Up (`step` -1) on the first line or Down (+1) on the last line: show the previous / next message of
        the history (past the newest: the draft). False when the key should move the cursor instead."""
        if self.editing is not None or not self.selection.is_empty:
            return False
        if step < 0:
            if not self._history or not self.navigator.is_first_wrapped_line(self.cursor_location):
                return False
            if self._recalled == 0:
                return False  # the oldest message: nothing further back
            if self._recalled is None:
                self._draft = self.text
            index: int | None = len(self._history) - 1 if self._recalled is None else self._recalled - 1
        else:
            if self._recalled is None or not self.navigator.is_last_wrapped_line(self.cursor_location):
                return False
            index = self._recalled + 1 if self._recalled + 1 < len(self._history) else None
        self._recalled = index
        text = self._draft if index is None else self._history[index]
        self.replace(text, self.document.start, self.document.end)  # undoable, unlike load_text
        self.move_cursor(self.document.end)
        return True

    def render_line(self, y: int) -> Strip:
        """A line of the box. While a layout pass gives it no width (a terminal narrower than the side columns,
        before they give way), the placeholder is not drawn: Textual's `TextArea` wraps it at width 0, which
        raises in rich's `chop_cells` and used to kill the app (issue #10.1; upstream: textual 8.2.8
        `TextArea.render_line`)."""
        if not self.text and self.placeholder and self.content_size.width <= 0:
            return Strip.blank(self.size.width)
        return super().render_line(y)

    def begin_edit(self, message_id: int, text: str) -> None:
        """Edit a sent message: load its text; the next submission replaces it."""
        self.editing = message_id
        self.load_text(text)
        self.move_cursor(self.document.end)
        self.border_subtitle = "editing a sent message: Enter resends it (later messages go) · Esc cancels"
        self.add_class("-editing")
        self.focus()

    def end_edit(self, clear: bool = True) -> None:
        """Leave edit mode and clear the text (unless `clear` is False)."""
        self.editing = None
        self.border_subtitle = ""
        self.remove_class("-editing")
        if clear:
            self.clear()

    def action_submit(self) -> None:
        """Send the prompt (what Enter does): take the text out and post it; blank prompts are ignored."""
        text = self.text
        if text.strip():
            self._recalled = None
            self._unsent.append(text)
            self.clear()
            self.post_message(self.Submitted(text.strip(), self.editing))

    def sent(self) -> None:
        """The screen accepted the oldest submission: leave edit mode (what was typed since stays)."""
        if self._unsent:
            self._unsent.pop(0)
        self.end_edit(clear=False)

    def refused(self) -> None:
        """The screen did not take the oldest submission: put its text back, ahead of what was typed since."""
        if not self._unsent:
            return
        text = self._unsent.pop(0)
        if self.text:
            self.insert(text + "\n", (0, 0))
        else:
            self.load_text(text)
            self.move_cursor(self.document.end)

    async def _run_own_binding(self, event: events.Key) -> bool:
        """Run this widget's (non-priority) binding of the key now, as the app would once the key reached it;
        True if one ran. What runs is what would have run: the focused widget is the first place the app looks
        for a key's binding (priority bindings ran before the key was forwarded here), keymap included."""
        chain = self.screen._binding_chain  # Textual's own lookup, with the app's keymap applied
        if not chain or chain[0][0] is not self:
            return False
        for binding in chain[0][1].key_to_bindings.get(event.key, ()):
            if not binding.priority and await self.app.run_action(binding.action, self):
                return True
        return False

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.action_submit()
        elif event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
        elif event.key == "escape" and self.editing is not None:
            event.stop()
            event.prevent_default()
            self.end_edit()
        elif event.key in ("up", "down") and self._recall(-1 if event.key == "up" else 1):
            event.stop()
            event.prevent_default()
        elif not event.is_printable and await self._run_own_binding(event):
            event.stop()  # handled here, in order: it must not run again when the key reaches the app
            event.prevent_default()
