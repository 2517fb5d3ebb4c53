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

from ...chat.answer import dropped_note
from ...chat.settings import ChatSettings
from .. import messages as m
from .chat_view import ChatView
from .prompt_input import PromptInput

QUEUED_NOTE = "waiting for the model to load…"
GENERATING_NOTE = "generating…"
STOPPING_NOTE = "stopping…"


def generating_note(dropped_messages: int = 0) -> str:
    """The note under an answer while it streams: `generating…`, then `· 6 earlier messages left out` when the
    conversation was cut to fit the model's context."""
    return GENERATING_NOTE + (f" · {dropped_note(dropped_messages)}" if dropped_messages else "")


class ChatPane(Vertical):
    """The open chat and its prompt. It calls no controller: what the user sends (`PromptInput.Submitted`) and
    asks to edit (`MessageView.EditRequested`) bubble on to the screen, which answers with `prompt_sent()` /
    `prompt_refused()` / `begin_edit()`.

    Attributes:
        model_name: the loaded model's name, shown on answers (None until the model is loaded).
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model_name: str | None = None

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
        return None if self.model_name is None else f"Assistant · {self.model_name}"

    def _shows(self, chat_id: int) -> bool:
        return self.query_one(ChatView).chat_id == chat_id

    def _update_history(self) -> None:
        """Give the prompt the open chat's user messages, for Up / Down."""
        view = self.query_one(ChatView)
        self.query_one(PromptInput).set_history([v.text for v in view.messages() if v.role == "user"])

    def _show_title(self, chat: Chat | None) -> None:
        title = "" if chat is None else f"{chat.title}  ·  {ChatSettings.of(chat).summary()}"
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
        note = QUEUED_NOTE if live is not None and live.state == "queued" else \
            generating_note(live.dropped_messages if live is not None else 0)
        self._show_title(event.chat)
        prompt = self.query_one(PromptInput)
        if prompt.editing is not None:
            prompt.end_edit()
        await self.query_one(ChatView).show_chat(event.chat, event.messages, live.text if shown else None, note,
                                                 self._answer_label(), event.positions,
                                                 None if live is None else _position(live.alternatives))
        self._update_history()

    async def close_chat(self) -> None:
        """Show no chat."""
        self._show_title(None)
        await self.query_one(ChatView).show_chat(None, [])
        self._update_history()

    @on(m.ChatChanged)
    def _changed(self, event: m.ChatChanged) -> None:
        if self._shows(event.chat.id):
            self.query_one(ChatView).chat = event.chat
            self._show_title(event.chat)

    @on(m.UserMessageStored)
    async def _user_message(self, event: m.UserMessageStored) -> None:
        if self._shows(event.chat_id):
            await self.query_one(ChatView).add_message(event.message)
            self._update_history()

    @on(m.MessagesDeleted)
    async def _deleted(self, event: m.MessagesDeleted) -> None:
        if self._shows(event.chat_id):
            await self.query_one(ChatView).remove_from(event.message_id, event.inclusive)
            self._update_history()

    @on(m.AnswersSetAside)
    async def _set_aside(self, event: m.AnswersSetAside) -> None:
        if self._shows(event.chat_id):
            await self.query_one(ChatView).set_aside_after(event.message_id)

    @on(m.BranchShown)
    async def _branch(self, event: m.BranchShown) -> None:
        if self._shows(event.chat_id):
            view = self.query_one(ChatView)
            await view.show_branch(list(event.branch.messages), event.branch.positions())
            self._update_history()  # Up / Down recall the user messages of the branch shown
            if event.focus is not None and (focused := view.view_of(event.focus)) is not None:
                focused.focus()

    # ----------------------------------------------------------------------------- streaming
    @on(m.GenerationQueued)
    async def _queued(self, event: m.GenerationQueued) -> None:
        if self._shows(event.chat_id):
            await self.query_one(ChatView).begin_answer(note=QUEUED_NOTE, position=_position(event.alternatives))

    @on(m.GenerationStarted)
    async def _started(self, event: m.GenerationStarted) -> None:
        if self._shows(event.chat_id):
            await self.query_one(ChatView).begin_answer(note=GENERATING_NOTE, label=self._answer_label(),
                                                        position=_position(event.alternatives))

    @on(m.PromptFitted)
    def _fitted(self, event: m.PromptFitted) -> None:
        answer = self.query_one(ChatView).answer
        if self._shows(event.chat_id) and answer is not None:
            answer.set_note(generating_note(event.dropped_messages))

    @on(m.TokensStreamed)
    async def _tokens(self, event: m.TokensStreamed) -> None:
        if self._shows(event.chat_id):
            await self.query_one(ChatView).append(event.text)

    @on(m.GenerationStopping)
    def _stopping(self, event: m.GenerationStopping) -> None:
        answer = self.query_one(ChatView).answer
        if self._shows(event.chat_id) and answer is not None:
            answer.set_note(STOPPING_NOTE)

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
    def prompt_sent(self) -> None:
        """What the prompt submitted was sent (or started a chat): leave editing."""
        self.query_one(PromptInput).sent()

    def prompt_refused(self) -> None:
        """What the prompt submitted was not sent: give it back to the prompt."""
        self.query_one(PromptInput).refused()

    def begin_edit(self, message_id: int, text: str) -> None:
        """Put one of the user's messages in the prompt, to edit and resend."""
        self.query_one(PromptInput).begin_edit(message_id, text)


def _position(alternatives: int) -> tuple[int, int] | None:
    """The place of a new answer that is the last of `alternatives` answers to its message (None: the only one)."""
    return (alternatives, alternatives) if alternatives > 1 else None
