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

from .chat_markdown import chat_parser

CODE_BLOCK = re.compile(r"^(`{3,}|~{3,})[^\n]*\n(.*?)^\1", re.DOTALL | re.MULTILINE)
REASONS = {"length": "length cap", "cancelled": "stopped", "error": "failed", "interrupted": "interrupted"}


def first_code_block(text: str) -> str | None:
    """The content of the first fenced code block in Markdown text, or None."""
    match = CODE_BLOCK.search(text)
    return match.group(2) if match else None


def message_stats(message: StoredMessage) -> str:
    """The stats line of an assistant message, e.g. `42 tokens · TTFT 35 ms · 51.2 tok/s`."""
    parts = []
    if message.completion_tokens is not None:
        parts.append(f"{message.completion_tokens} tokens")
    if message.ttft_ms is not None:
        parts.append(f"TTFT {message.ttft_ms:.0f} ms")
    if message.tokens_per_s is not None:
        parts.append(f"{message.tokens_per_s:.1f} tok/s")
    if message.finish_reason in REASONS:
        parts.append(REASONS[message.finish_reason])
    return " · ".join(parts)


class MessageView(Vertical, can_focus=True):
    """A message; focus it (Tab or click) to copy it, copy its code, or edit and resend it (yours).

    Args:
        role: `user` or `assistant` (others are shown as they are named).
        text: the Markdown text so far.
        message_id: the stored message's id (None while an answer has not been stored yet).
        label: the header, e.g. the model's name for an answer.
        stats: the line under an answer.
    """

    BINDINGS = [
        Binding("c", "copy", "Copy"),
        Binding("y", "copy_code", "Copy code"),
        Binding("e", "edit", "Edit & resend"),
    ]

    @dataclass
    class EditRequested(Message):
        """The user wants to edit this (user) message and send it again."""

        message_id: int
        text: str

    def __init__(self, role: str, text: str, *, message_id: int | None = None, label: str | None = None,
                 stats: str = "") -> None:
        super().__init__(classes=f"message -{role}")
        self.role = role
        self.text = text
        self.message_id = message_id
        self._label = label or {"user": "You", "assistant": "Assistant"}.get(role, role.title())
        self._stats = stats
        self._stream: MarkdownStream | None = None

    @classmethod
    def from_stored(cls, message: StoredMessage) -> MessageView:
        """A view of a stored message."""
        stats = message_stats(message) if message.role == "assistant" else ""
        return cls(message.role, message.content, message_id=message.id, label=_label(message), stats=stats)

    def compose(self) -> ComposeResult:
        """The label, the Markdown text and the stats line."""
        yield Static(self._label, classes="message-label", markup=False)
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
                self.query_one(".message-label", Static).update(label)
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.set_class(False, "-streaming")
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
