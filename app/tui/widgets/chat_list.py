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

    Change it through `show_chats`, `update_chat` and `set_busy` (from the screen's message handlers). While
    the user moves through the list (it has focus) its rows keep their places: a new order of the same chats
    waits until focus leaves the list, and the highlight stays on the chat it is on.
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
        self._order: list[int] | None = None  # a newer order held back while the user is in the list
        self.loaded = False  # True once a list from the store has been shown

    @property
    def chat_ids(self) -> list[int]:
        """The listed chats' ids, in display order."""
        return [int(option.id) for option in self.options if option.id is not None]

    @property
    def highlighted_chat(self) -> int | None:
        """The id of the highlighted chat, if any."""
        option = self.highlighted_option
        return None if option is None or option.id is None else int(option.id)

    def show_chats(self, chats: list[Chat], busy: set[int], current: int | None, show_archived: bool) -> None:
        """Replace the list; highlight `current` when it is listed (while the user is in the list: the chat
        they highlighted, and the same chats in a new order keep the old one until they leave the list)."""
        self._busy = set(busy)
        self.border_title = "Chats + archived" if show_archived else "Chats"
        if self.has_focus and self.loaded:
            if {chat.id for chat in chats} == set(self._chats):
                self._chats = {chat.id: chat for chat in chats}
                self._order = None if list(self._chats) == self.chat_ids else list(self._chats)
                for chat in chats:
                    self.replace_option_prompt(str(chat.id), self._prompt(chat))
                return
            current = self.highlighted_chat or current
        self._show(chats, current)
        self.loaded = True

    def _show(self, chats: list[Chat], current: int | None) -> None:
        self._chats = {chat.id: chat for chat in chats}
        self._order = None
        self.set_options(Option(self._prompt(chat), id=str(chat.id)) for chat in chats)
        if current is not None:
            self.highlight_chat(current)

    def on_blur(self) -> None:
        """The user left the list: show the order held back while they were in it."""
        if self._order is not None:
            self._show([self._chats[chat_id] for chat_id in self._order], self.highlighted_chat)

    def highlight_chat(self, chat_id: int) -> None:
        """Move the highlight to a chat (if it is listed)."""
        if chat_id in self._chats:
            self.highlighted = self.get_option_index(str(chat_id))

    def neighbour(self, chat_id: int) -> int | None:
        """The chat listed below `chat_id` (else the one above it), e.g. to open when it leaves the list."""
        ids = self.chat_ids
        if chat_id not in ids:
            return None
        at = ids.index(chat_id)
        return ids[at + 1] if at + 1 < len(ids) else ids[at - 1] if at > 0 else None

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
