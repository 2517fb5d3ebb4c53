"""The open chat: its messages top to bottom, and the answer streaming into it, if any."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from storage import Chat
from storage import Message as StoredMessage

from .message_view import MessageView

EMPTY_HINT = ("Nothing here yet. Type below: Enter sends, Shift+Enter (or Ctrl+J) starts a new line.\n"
              "Ctrl+N starts another chat; chats answer at the same time.")
NO_CHAT_HINT = "No chat open. Type below to start one (or Ctrl+N); pick one on the left with Enter."


class ChatView(VerticalScroll):
    """Messages of one chat (`chat_id`): the branch it shows, kept scrolled to the newest while it streams (unless
    the user scrolled up to read).

    The screen changes it through `show_chat`, `show_branch`, `add_message`, `set_aside_after`, `begin_answer`,
    `append`, `end_answer` and `remove_from`; every call about another chat than the shown one is the caller's
    to filter.
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.chat: Chat | None = None
        self._answer: MessageView | None = None  # the streaming answer, when this chat has one

    @property
    def chat_id(self) -> int | None:
        """The shown chat's id."""
        return None if self.chat is None else self.chat.id

    @property
    def answer(self) -> MessageView | None:
        """The answer streaming now in the shown chat, if any."""
        return self._answer

    def messages(self) -> list[MessageView]:
        """The message views, top to bottom."""
        return list(self.query_children(MessageView))

    def compose(self) -> ComposeResult:
        """The hint shown while no chat is open."""
        yield Static(NO_CHAT_HINT, classes="chat-hint")

    def view_of(self, message_id: int) -> MessageView | None:
        """The view of a stored message, if it is shown."""
        return next((v for v in self.messages() if v.message_id == message_id), None)

    async def show_chat(self, chat: Chat | None, stored: list[StoredMessage], live_text: str | None = None,
                        live_note: str = "generating…", label: str | None = None,
                        positions: dict[int, tuple[int, int]] | None = None,
                        live_position: tuple[int, int] | None = None) -> None:
        """Show a chat: its stored messages (`positions`: of those with alternatives), then its streaming
        answer's text so far (`live_text`; `live_position` when it is a regenerated answer)."""
        self.chat = chat
        self._answer = None
        positions = positions or {}
        views = [MessageView.from_stored(x, positions.get(x.id)) for x in stored
                 if not (live_text is not None and x.streaming)]
        with self.app.batch_update():
            await self.remove_children()
            if chat is None:
                await self.mount(Static(NO_CHAT_HINT, classes="chat-hint"))
                return
            await self.mount(Static(EMPTY_HINT, classes="chat-hint", id="empty-hint"))
            await self.mount_all(views)
        self._update_hint()
        self.anchor(False)
        self.scroll_home(animate=False, immediate=True)
        if live_text is not None:
            await self.begin_answer(live_text, live_note, label, live_position)
        self.call_after_refresh(self._follow, jump=True)

    async def show_branch(self, stored: list[StoredMessage], positions: dict[int, tuple[int, int]]) -> None:
        """Show another branch of the open chat: the views of the messages both branches share stay (their
        positions updated), the rest give way to the new branch's messages. Not while an answer streams."""
        if self._answer is not None:
            return
        views = self.messages()
        kept = 0
        while kept < min(len(views), len(stored)) and views[kept].message_id == stored[kept].id:
            kept += 1
        with self.app.batch_update():
            for view in views[kept:]:
                await view.remove()
            for view, message in zip(views[:kept], stored):
                view.set_position(positions.get(message.id))
            await self.mount_all([MessageView.from_stored(x, positions.get(x.id)) for x in stored[kept:]])
        self._update_hint()

    async def add_message(self, message: StoredMessage) -> None:
        """Show a newly stored message at the bottom."""
        await self.mount(MessageView.from_stored(message))
        self._update_hint()
        self.call_after_refresh(self._follow)

    async def begin_answer(self, text: str = "", note: str = "generating…", label: str | None = None,
                           position: tuple[int, int] | None = None) -> MessageView:
        """Start the streaming answer (with the text it has so far); `label` e.g. `Assistant · <model>`;
        `position` `(n, n)` for a regenerated answer (the n-th answer to its message)."""
        if self._answer is None:
            self._answer = MessageView("assistant", text, label=label, position=position)
            await self.mount(self._answer)
            self._answer.start_stream(note)
            self._update_hint()
            self.call_after_refresh(self._follow)
        else:
            self._answer.set_note(note)
        return self._answer

    async def append(self, text: str) -> None:
        """Append streamed text to the answer."""
        if self._answer is None:
            await self.begin_answer()
        assert self._answer is not None
        await self._answer.append(text)
        if not self.is_anchored:
            self.call_after_refresh(self._follow)

    async def end_answer(self, message: StoredMessage | None, note: str = "") -> None:
        """Finish the streaming answer with the stored message (its full text and stats), or with `note`
        when nothing was stored (stopped or failed before the first token: the note stays on screen)."""
        answer, self._answer = self._answer, None
        if answer is None:  # e.g. it finished while the chat was being opened, or failed before starting
            shown = [v for v in self.messages() if message is not None and v.message_id == message.id]
            if shown:
                await shown[0].finish(message)
                return
            if message is None and not note:
                return
            answer = MessageView("assistant", "")
            await self.mount(answer)
            self._update_hint()
        await answer.finish(message, note)

    async def set_aside_after(self, message_id: int) -> None:
        """Remove the views after the message's (a regenerate's answers set aside: they stay stored)."""
        views = self.messages()
        index = next((i for i, v in enumerate(views) if v.message_id == message_id), None)
        if index is not None:
            for view in views[index + 1:]:
                await view.remove()
        self._update_hint()

    async def remove_from(self, message_id: int, inclusive: bool) -> None:
        """Remove the views of messages stored from `message_id` on (or after it)."""
        doomed = [v for v in self.messages() if v.message_id is not None
                  and (v.message_id > message_id or (inclusive and v.message_id == message_id))]
        for view in doomed:
            await view.remove()
        self._update_hint()

    def _follow(self, jump: bool = False) -> None:
        """Keep to the newest message once the messages overflow the view (a short chat stays at the top).

        Anchoring makes Textual keep the view scrolled to the end as the answer grows, until the user scrolls
        up (and again once they scroll back down). `jump` scrolls to the end of a chat that was just opened.
        """
        overflows = self.virtual_size.height > self.scrollable_content_region.height
        if overflows and (jump or not self.is_anchored or self.is_vertical_scroll_end):
            self.anchor()

    def _update_hint(self) -> None:
        for hint in self.query("#empty-hint"):
            hint.display = not self.messages()
