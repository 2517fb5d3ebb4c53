"""One message of a chat: who said it, its Markdown, and (for answers) its stats; streams while answering."""

from __future__ import annotations

import re
from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

from storage import Message as StoredMessage

from ...chat.answer import stats_line
from .chat_markdown import chat_parser

CODE_BLOCK = re.compile(r"^(`{3,}|~{3,})[^\n]*\n(.*?)^\1", re.DOTALL | re.MULTILINE)


def first_code_block(text: str) -> str | None:
    """The content of the first fenced code block in Markdown text, or None."""
    match = CODE_BLOCK.search(text)
    return match.group(2) if match else None


def message_stats(message: StoredMessage) -> str:
    """The stats line of an assistant message, e.g. `42 tokens · TTFT 35 ms · 512 cached · 51.2 tok/s`
    (`app.chat.answer`)."""
    return stats_line(message.completion_tokens, message.ttft_ms, message.tokens_per_s, message.finish_reason,
                      message.cached_tokens, message.dropped_messages)


class MessageView(Vertical, can_focus=True):
    """A message; focus it (Tab or click) to copy it, copy its code, edit and resend it (yours), or page through
    its alternatives (a regenerated answer's: `[` / `]` or Left / Right).

    Args:
        role: `user` or `assistant` (others are shown as they are named).
        text: the Markdown text so far.
        message_id: the stored message's id (None while an answer has not been stored yet).
        label: the header, e.g. the model's name for an answer.
        stats: the line under an answer.
        position: `(number, count)` among its alternatives, shown as "answer 2/3" when count > 1.
    """

    BINDINGS = [
        Binding("c", "copy", "Copy"),
        Binding("y", "copy_code", "Copy code"),
        Binding("e", "edit", "Edit & resend"),
        Binding("left_square_bracket,left", "alternative(-1)", "Previous answer", key_display="["),
        Binding("right_square_bracket,right", "alternative(1)", "Next answer", key_display="]"),
    ]

    @dataclass
    class EditRequested(Message):
        """The user wants to edit this (user) message and send it again."""

        message_id: int
        text: str

    @dataclass
    class AlternativeRequested(Message):
        """The user wants to see the alternative `step` places after (negative: before) this message."""

        message_id: int
        step: int

    def __init__(self, role: str, text: str, *, message_id: int | None = None, label: str | None = None,
                 stats: str = "", position: tuple[int, int] | None = None) -> None:
        super().__init__(classes=f"message -{role}")
        self.role = role
        self.text = text
        self.message_id = message_id
        self.position = position
        self._label = label or {"user": "You", "assistant": "Assistant"}.get(role, role.title())
        self._stats = stats
        self._stream: MarkdownStream | None = None

    @classmethod
    def from_stored(cls, message: StoredMessage, position: tuple[int, int] | None = None) -> MessageView:
        """A view of a stored message (`position` among its alternatives, if it has any)."""
        stats = message_stats(message) if message.role == "assistant" else ""
        return cls(message.role, message.content, message_id=message.id, label=_label(message), stats=stats,
                   position=position)

    @property
    def alternatives(self) -> int:
        """How many alternatives the message has, itself included (1: none)."""
        return 1 if self.position is None else self.position[1]

    def _label_text(self) -> str:
        if self.alternatives < 2:
            return self._label
        number, count = self.position  # type: ignore[misc]
        word = "answer" if self.role == "assistant" else "version"
        return f"{self._label}  ·  ‹ {word} {number}/{count} ›"

    def set_position(self, position: tuple[int, int] | None) -> None:
        """Show the message's place among its alternatives (None or a count of 1: it has none)."""
        self.position = position
        self.query_one(".message-label", Static).update(self._label_text())
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Paging keys work (and show in the footer) only on a stored message that has alternatives; elsewhere
        Left / Right keep scrolling."""
        if action == "alternative":
            return self.alternatives > 1 and self.message_id is not None and not self.streaming
        return True

    def compose(self) -> ComposeResult:
        """The label, the Markdown text and the stats line."""
        yield Static(self._label_text(), classes="message-label", markup=False)
        yield Markdown(self.text, classes="message-body", parser_factory=chat_parser)
        yield Static(self._stats, classes="message-stats", markup=False)

    @property
    def streaming(self) -> bool:
        """True while text is being streamed in."""
        return self._stream is not None

    def start_stream(self, note: str = "generating…") -> None:
        """Stream appended text through a `MarkdownStream`."""
        self._stream = Markdown.get_stream(self.query_one(Markdown))
        self.set_class(True, "-streaming")
        self.query_one(".message-stats", Static).update(note)

    def set_note(self, note: str) -> None:
        """Replace the stats line (e.g. queued, generating)."""
        self.query_one(".message-stats", Static).update(note)

    async def append(self, delta: str) -> None:
        """Append streamed text."""
        self.text += delta
        if self._stream is not None:
            await self._stream.write(delta)

    async def finish(self, message: StoredMessage | None, note: str = "") -> None:
        """End streaming: show the whole text at once, and the stored answer's stats (or `note`)."""
        if message is not None:
            self.text = message.content
            self.message_id = message.id
            if label := _label(message):
                self._label = label
                self.query_one(".message-label", Static).update(self._label_text())
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.set_class(False, "-streaming")
        self.refresh_bindings()
        await self.query_one(Markdown).update(self.text)
        self.query_one(".message-stats", Static).update(message_stats(message) if message else note)

    async def on_unmount(self) -> None:
        """Stop a stream still running (the view was closed mid-answer)."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.stop()

    def action_copy(self) -> None:
        """Copy the message's text."""
        self.app.copy_to_clipboard(self.text)
        self.notify("Message copied to the clipboard")

    def action_copy_code(self) -> None:
        """Copy the message's first code block."""
        code = first_code_block(self.text)
        if code is None:
            self.notify("This message has no code block", severity="warning")
            return
        self.app.copy_to_clipboard(code)
        self.notify("Code block copied to the clipboard")

    def action_alternative(self, step: int) -> None:
        """Ask to show the alternative `step` places after (negative: before) this message."""
        if self.message_id is not None:
            self.post_message(self.AlternativeRequested(self.message_id, step))

    def action_edit(self) -> None:
        """Ask to edit and resend this message (yours only)."""
        if self.role != "user" or self.message_id is None:
            self.notify("Only your own stored messages can be edited", severity="warning")
            return
        self.post_message(self.EditRequested(self.message_id, self.text))

    @on(Markdown.LinkClicked)
    def _open_link(self, event: Markdown.LinkClicked) -> None:
        event.stop()
        self.app.open_url(event.href)


def _label(message: StoredMessage) -> str | None:
    if message.role == "assistant" and message.model:
        return f"Assistant · {message.model}"
    return None
