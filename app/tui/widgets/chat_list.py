"""The sidebar: every chat, most recently updated first, with a marker on chats answering right now."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.content import Content
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from storage import Chat

BUSY_MARK = "●"


class ChatList(OptionList):
    """The list of chats; Enter (or a click) opens one. Archived chats are listed only when asked.

    Change it through `show_chats`, `update_chat` and `set_busy` (from the screen's message handlers).
    """

    @dataclass
    class ChatChosen(Message):
        """The user chose a chat in the list."""

        chat_id: int

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "Chats"
        self._chats: dict[int, Chat] = {}
        self._busy: set[int] = set()
        self.loaded = False  # True once a list from the store has been shown

    @property
    def chat_ids(self) -> list[int]:
        """The listed chats' ids, in display order."""
        return [int(option.id) for option in self.options if option.id is not None]

    def show_chats(self, chats: list[Chat], busy: set[int], current: int | None, show_archived: bool) -> None:
        """Replace the list; highlight `current` when it is listed."""
        self._chats = {chat.id: chat for chat in chats}
        self._busy = set(busy)
        self.border_title = "Chats + archived" if show_archived else "Chats"
        self.set_options(Option(self._prompt(chat), id=str(chat.id)) for chat in chats)
        if current is not None:
            self.highlight_chat(current)
        self.loaded = True

    def highlight_chat(self, chat_id: int) -> None:
        """Move the highlight to a chat (if it is listed)."""
        if chat_id in self._chats:
            self.highlighted = self.get_option_index(str(chat_id))

    def update_chat(self, chat: Chat) -> None:
        """Show a chat's new title or archived flag (if it is listed)."""
        if chat.id in self._chats:
            self._chats[chat.id] = chat
            self.replace_option_prompt(str(chat.id), self._prompt(chat))

    def set_busy(self, chat_id: int, busy: bool) -> None:
        """Show or clear the marker of a chat that is answering."""
        (self._busy.add if busy else self._busy.discard)(chat_id)
        if chat_id in self._chats:
            self.replace_option_prompt(str(chat_id), self._prompt(self._chats[chat_id]))

    def is_marked(self, chat_id: int) -> bool:
        """True when the chat carries the answering marker."""
        return chat_id in self._busy

    def _prompt(self, chat: Chat) -> Content:
        mark = (f"{BUSY_MARK} ", "bold $success") if chat.id in self._busy else "  "
        if chat.archived:
            return Content.assemble(mark, (chat.title or "(untitled)", "dim italic"), (" (archived)", "dim"))
        return Content.assemble(mark, chat.title or "(untitled)")

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option_id is not None:
            self.post_message(self.ChatChosen(int(event.option_id)))
