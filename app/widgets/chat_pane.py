"""The open chat: its title line, its messages (streaming included) and the prompt that sends into it.

`Sessions` and `ChatLibrary` post their facts here; this pane shows those about the open chat and lets every
message bubble on to the screen (which keeps the chat list's markers). A turn of a chat that is not shown
keeps streaming into `Sessions`; opening the chat shows the text so far and the stream continues.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from storage import Chat

from .. import messages as m
from ..chat_settings import ChatSettings
from ..sessions import BusyError, Sessions
from .chat_view import ChatView
from .message_view import MessageView
from .prompt_input import PromptInput

QUEUED_NOTE = "waiting for the model to load…"
GENERATING_NOTE = "generating…"


def chat_settings(chat: Chat) -> ChatSettings:
    """A chat's stored settings."""
    return ChatSettings.from_chat(chat.system_prompt, chat.params)


class ChatPane(Vertical):
    """The open chat and its prompt.

    Args:
        sessions: the generation controller (sends, edits; knows what is streaming).
    """

    def __init__(self, sessions: Sessions, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.sessions = sessions

    def compose(self) -> ComposeResult:
        """The title line, the messages and the prompt."""
        yield Static("", id="chat-title", markup=False)
        yield ChatView(id="chat-view")
        yield PromptInput(id="prompt")

    @property
    def chat(self) -> Chat | None:
        """The open chat."""
        return self.query_one(ChatView).chat

    def _answer_label(self) -> str | None:
        engine = self.sessions.engine
        return None if engine is None else f"Assistant · {engine.model.name}"

    def _shows(self, chat_id: int) -> bool:
        return self.query_one(ChatView).chat_id == chat_id

    def _show_title(self, chat: Chat | None) -> None:
        title = "" if chat is None else f"{chat.title}  ·  {chat_settings(chat).summary()}"
        self.query_one("#chat-title", Static).update(title)

    def copy_last_answer(self, code: bool = False) -> None:
        """Copy the last answer shown (or its first code block) to the clipboard."""
        answers = [v for v in self.query_one(ChatView).messages() if v.role == "assistant"]
        if not answers:
            self.notify("No answer to copy yet", severity="warning")
        elif code:
            answers[-1].action_copy_code()
        else:
            answers[-1].action_copy()

    # ------------------------------------------------------------------------- the open chat
    @on(m.ChatOpened)
    async def _opened(self, event: m.ChatOpened) -> None:
        live = event.live
        shown = live is not None and live.state in ("queued", "running")
        note = QUEUED_NOTE if live is not None and live.state == "queued" else GENERATING_NOTE
        self._show_title(event.chat)
        prompt = self.query_one(PromptInput)
        if prompt.editing is not None:
            prompt.end_edit()
        await self.query_one(ChatView).show_chat(event.chat, event.messages, live.text if shown else None, note,
                                                 self._answer_label())

    async def close_chat(self) -> None:
        """Show no chat."""
        self._show_title(None)
        await self.query_one(ChatView).show_chat(None, [])

    @on(m.ChatChanged)
    def _changed(self, event: m.ChatChanged) -> None:
        if self._shows(event.chat.id):
            self.query_one(ChatView).chat = event.chat
            self._show_title(event.chat)

    @on(m.UserMessageStored)
    async def _user_message(self, event: m.UserMessageStored) -> None:
        if self._shows(event.chat_id):
            await self.query_one(ChatView).add_message(event.message)

    @on(m.MessagesDeleted)
    async def _deleted(self, event: m.MessagesDeleted) -> None:
        if self._shows(event.chat_id):
            await self.query_one(ChatView).remove_from(event.message_id, event.inclusive)

    # ----------------------------------------------------------------------------- streaming
    @on(m.GenerationQueued)
    async def _queued(self, event: m.GenerationQueued) -> None:
        if self._shows(event.chat_id):
            await self.query_one(ChatView).begin_answer(note=QUEUED_NOTE)

    @on(m.GenerationStarted)
    async def _started(self, event: m.GenerationStarted) -> None:
        if self._shows(event.chat_id):
            await self.query_one(ChatView).begin_answer(note=GENERATING_NOTE, label=self._answer_label())

    @on(m.TokensStreamed)
    async def _tokens(self, event: m.TokensStreamed) -> None:
        if self._shows(event.chat_id):
            await self.query_one(ChatView).append(event.text)

    @on(m.GenerationFinished)
    async def _finished(self, event: m.GenerationFinished) -> None:
        if self._shows(event.chat_id):
            view = self.query_one(ChatView)
            stopped = event.finish_reason == "cancelled" and view.answer is not None
            await view.end_answer(event.message, "stopped before the first token" if stopped else "")

    @on(m.GenerationFailed)
    async def _failed(self, event: m.GenerationFailed) -> None:
        if self._shows(event.chat_id):
            await self.query_one(ChatView).end_answer(event.message, f"failed: {event.error}")

    # -------------------------------------------------------------------------------- input
    @on(PromptInput.Submitted)
    def _submitted(self, event: PromptInput.Submitted) -> None:
        event.stop()
        chat = self.chat
        if chat is None:  # typing into the empty screen starts a chat, as a person expects
            if event.editing is None:
                self.post_message(m.NewChatRequested(event.text))
                self.query_one(PromptInput).end_edit()
            return
        try:
            if event.editing is None:
                self.sessions.send(chat, event.text)
            else:
                self.sessions.edit_and_resend(chat, event.editing, event.text)
        except BusyError as exc:
            self.notify(str(exc), severity="warning")
            return
        self.query_one(PromptInput).end_edit()

    @on(MessageView.EditRequested)
    def _edit(self, event: MessageView.EditRequested) -> None:
        event.stop()
        if self.chat is not None and self.chat.id in self.sessions.busy_chats():
            self.notify("This chat is still answering: Esc stops it first", severity="warning")
            return
        self.query_one(PromptInput).begin_edit(event.message_id, event.text)
