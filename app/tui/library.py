"""Chat library operations for the TUI: list, open, create, rename, archive, delete, settings, search, export, and
paging through a chat's alternative answers.

`ChatLibrary` wraps the async store; each method does its storage work and posts one `app.tui.messages` fact
for the screen to show. The screen runs these coroutines as workers, so a `StorageError` fails the worker
(and is shown as a notification) rather than the UI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path
from typing import Any, Callable

from storage import NotFoundError, Store

from . import messages as m
from ..chat.settings import ChatSettings
from .sessions import DEFAULT_TITLE, Sessions


class ChatLibrary:
    """Storage actions on chats, each reported by a posted message.

    Args:
        store: the open history store.
        sessions: the generation controller (for the streaming state of an opened chat).
        post: called with each message (a screen's `post_message`).
    """

    def __init__(self, store: Store, sessions: Sessions, post: Callable[[Any], object]):
        self.store = store
        self.sessions = sessions
        self._post = post

    async def load(self, show_archived: bool, select: int | None = None) -> None:
        """Read the chat list (newest first); posts `ChatsLoaded`."""
        chats = await self.store.list_chats(include_archived=show_archived)
        self._post(m.ChatsLoaded(chats, show_archived, select))

    async def open(self, chat_id: int, show: int | None = None) -> None:
        """Read a chat and the branch it shows; posts `ChatOpened` with the answer streaming now, if any.

        `show`: a message of the chat whose branch to show (a search hit in an alternative that was not shown).
        While the chat answers, the shown messages end with the one it answers (a regenerate's answers set aside
        are not shown). The streaming text is copied right after the read, in the same step as the post, so the
        `TokensStreamed` messages that follow continue it exactly.
        """
        chat = await self.store.get_chat(chat_id)
        if chat is None:
            return
        if show is not None:
            with contextlib.suppress(NotFoundError):  # deleted since it was found
                await self.store.show_message(show)
        branch = await self.store.branch(chat_id)
        stored = list(branch.messages)
        live = self.sessions.live(chat_id)
        ids = [x.id for x in stored]
        if live is not None and live.parent_id in ids:
            stored = stored[:ids.index(live.parent_id) + 1]
        self._post(m.ChatOpened(chat, stored, None if live is None else live.snapshot(), branch.positions()))

    async def show_alternative(self, chat_id: int, message_id: int, step: int) -> None:
        """Show the alternative `step` places after (negative: before) a shown message, stopping at the first
        and the last, and the conversation that followed it; posts `BranchShown` with the cursor on it."""
        branch = await self.store.show_alternative(message_id, step)
        focus = next((x.id for x in branch.messages if message_id in branch.alternatives[x.id]), None)
        self._post(m.BranchShown(chat_id, branch, focus))

    async def read_branch(self, chat_id: int) -> None:
        """Read the branch the chat shows again; posts `BranchShown` (nothing when the chat was deleted)."""
        try:
            branch = await self.store.branch(chat_id)
        except NotFoundError:
            return
        self._post(m.BranchShown(chat_id, branch))

    async def create(self, first_message: str | None = None) -> None:
        """Store a new chat with the default settings, posts `ChatCreated`, and sends `first_message` in it
        when given. Raises StorageError."""
        chat = await self.store.create_chat(DEFAULT_TITLE, None, ChatSettings().to_params())
        self._post(m.ChatCreated(chat))
        if first_message:
            self.sessions.send(chat, first_message)

    async def rename(self, chat_id: int, title: str) -> None:
        """Set a chat's title; posts `ChatChanged`."""
        chat = await self.store.rename_chat(chat_id, title)
        self.sessions.rename(chat_id, title)
        self._post(m.ChatChanged(chat))

    async def archive(self, chat_id: int, archived: bool) -> None:
        """Archive or unarchive a chat; posts `ChatArchived`."""
        self._post(m.ChatArchived(await self.store.archive_chat(chat_id, archived)))

    async def delete(self, chat_id: int) -> None:
        """Stop the chat's answer, if any, and delete the chat; posts `ChatDeleted`."""
        self.sessions.stop(chat_id)
        await self.store.delete_chat(chat_id)
        self._post(m.ChatDeleted(chat_id))

    async def save_settings(self, chat_id: int, settings: ChatSettings) -> None:
        """Store a chat's system prompt and sampling params; posts `ChatChanged`."""
        chat = await self.store.update_chat_settings(chat_id, settings.system_prompt, settings.to_params())
        self._post(m.ChatChanged(chat))

    async def search(self, query: str) -> None:
        """Full-text search over every message; posts `SearchFinished`."""
        self._post(m.SearchFinished(query, await self.store.search(query, limit=50)))

    async def export(self, chat_id: int, base: Path) -> None:
        """Write the chat to `<base>.md` and `<base>.json` (folders created; a `.md`/`.json` suffix on `base`
        is dropped); posts `ChatExported`."""
        base = base.expanduser()
        if base.suffix.lower() in (".md", ".json"):
            base = base.with_suffix("")
        markdown = await self.store.export_chat_markdown(chat_id)
        data = json.dumps(await self.store.export_chat_json(chat_id), indent=2, ensure_ascii=False, default=str)
        paths = [base.with_name(base.name + ".md"), base.with_name(base.name + ".json")]
        await asyncio.to_thread(_write_files, {paths[0]: markdown, paths[1]: data + "\n"})
        self._post(m.ChatExported(chat_id, paths))


def export_base(folder: Path, chat_id: int, title: str) -> Path:
    """The default export path without suffix: `<folder>/baton-chat-<id>-<title slug>`."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or "chat"
    return folder / f"baton-chat-{chat_id}-{slug}"


def _write_files(files: dict[Path, str]) -> None:
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
