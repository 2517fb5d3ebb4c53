"""The chat list and the keys around it (issue #10.8): the footer names the chat keys, titles are cut at a
word, the list keeps still while the user moves through it, and archiving says where the chat went.

Pilot presses the keys on `random:tiny` with a real SQLite file, at 80x24 and at a large size.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.tui import BatonApp
from app.tui.commands import COMMANDS
from app.tui.sessions import title_from
from app.tui.widgets.chat_list import ChatList
from storage import Store
from app.tui.widgets.prompt_input import PromptInput
from tui_support import (config_dir, idle, new_chat, open_chat_id, ready, record_notifications,  # noqa: F401
                         send, wait_for)
from tui_text import screen_lines

SMALL, LARGE = (80, 24), (160, 45)
FIRST = "Please write an internationalization checklist for a command-line application, with examples"


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "baton.db")
    yield store
    await store.close()


# ------------------------------------------------------------------------------------ the footer
@pytest.mark.parametrize("size, shown", [
    (SMALL, ["^n New chat", "esc Stop", "f1 Help"]),
    (LARGE, ["^n New chat", "esc Stop", "f1 Help", "f2 Rename", "f4 Archive", "f5 Show archived", "f8 Delete",
             "^s Export", "f3 Settings", "f9 Jobs", "^r Regenerate", "^f Search"]),
])
async def test_the_footer_shows_the_chat_keys_and_help_first(make_engine, store, size, shown):
    app = BatonApp(engine=make_engine(), store=store)
    async with app.run_test(size=size) as pilot:
        await ready(pilot)
        await pilot.pause()
        footer = screen_lines(app)[-1]
        for item in shown:
            assert item in footer, (item, footer)


# ------------------------------------------------------------------------------------ the README
async def test_the_palette_entries_the_readme_names_exist(make_engine, store):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    named = {" ".join(name.split()) for name in re.findall(r"Ctrl\+P,\s*\*([^*]+)\*", readme)}
    assert named, "the README names no palette entry"
    app = BatonApp(engine=make_engine(), store=store)
    async with app.run_test(size=LARGE) as pilot:
        screen = await ready(pilot)
        entries = {command.title for command in app.get_system_commands(screen)} | {name for name, _, _ in COMMANDS}
        assert named <= entries, named - entries


# ------------------------------------------------------------------------------------ titles
def test_a_title_is_cut_at_a_word_with_an_ellipsis():
    assert title_from(FIRST) == "Please write an internationalization checklist for a…"
    assert title_from("  Capital\nof   France? ") == "Capital of France?"
    assert title_from(" \n ") == "New chat"
    assert title_from("one two, three", limit=10) == "one two…"  # no comma before the ellipsis
    assert title_from("x" * 100) == "x" * 59 + "…"  # one word longer than half the room is cut inside
    assert all(len(title_from(FIRST[:n])) <= 60 for n in range(len(FIRST)))


def list_rows(app, chat_list: ChatList) -> list[str]:
    """The chat list's rows as the screen shows them, without the busy marker column."""
    region = chat_list.scrollable_content_region
    return [line[region.x:region.right].strip() for line in screen_lines(app)[region.y:region.bottom]]


@pytest.mark.parametrize("size", [SMALL, LARGE])
async def test_a_long_first_message_titles_the_chat_at_a_word_and_the_list_shows_what_fits(
        make_engine, store, size):
    app = BatonApp(engine=make_engine(), store=store)
    async with app.run_test(size=size) as pilot:
        screen = await ready(pilot)
        chat_id = await new_chat(pilot)
        await send(pilot, FIRST, press=True)
        title = "Please write an internationalization checklist for a…"
        await wait_for(pilot, lambda: screen.pane.chat.title == title, what="the chat's new title")
        await pilot.press("escape")  # its answer is not wanted
        await idle(pilot)
        assert (await store.get_chat(chat_id)).title == title
        chat_list = screen.query_one(ChatList)
        width = chat_list.scrollable_content_region.width
        row = list_rows(app, chat_list)[0]
        assert row.endswith("…") and title.startswith(row[:-1]) and len(row) >= width - 3, (row, width)
        title_line = screen_lines(app)[screen.query_one("#chat-title").region.y]
        assert title in title_line or size == SMALL


# ------------------------------------------------------------------------------------ the list keeps still
def count_calls(obj, name: str) -> list[tuple]:
    """Wrap a method of `obj`; returns the list of the arguments of each call from now on."""
    calls: list[tuple] = []
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    setattr(obj, name, wrapper)
    return calls


@pytest.mark.parametrize("size", [SMALL, LARGE])
async def test_the_list_keeps_its_order_and_highlight_while_the_user_moves_through_it(make_engine, store, size):
    app = BatonApp(engine=make_engine(), store=store)
    async with app.run_test(size=size) as pilot:
        screen = await ready(pilot)
        oldest, middle, newest = [await new_chat(pilot) for _ in range(3)]
        chat_list = screen.query_one(ChatList)
        await wait_for(pilot, lambda: chat_list.chat_ids == [newest, middle, oldest], what="the three chats")
        await pilot.press("ctrl+l", "down")  # the user moves to the middle chat; the newest stays open
        assert app.focused is chat_list and chat_list.highlighted == 1
        loads = count_calls(chat_list, "show_chats")
        # A message arrives in the oldest chat (e.g. a turn that waited for the model): it is now the newest.
        oldest_chat = await store.get_chat(oldest)
        screen.sessions.send(oldest_chat, "hello")
        await wait_for(pilot, lambda: loads, what="the chat list to be read again")
        await pilot.pause()
        assert chat_list.chat_ids == [newest, middle, oldest]  # no row moved under the user
        assert chat_list.highlighted == 1 and chat_list.chat_ids[1] == middle
        assert list_rows(app, chat_list)[1].endswith("New chat")
        await pilot.press("enter")  # choosing the middle chat leaves the list: now it takes the new order
        await wait_for(pilot, lambda: open_chat_id(pilot) == middle, what="the chosen chat to open")
        await wait_for(pilot, lambda: chat_list.chat_ids == [oldest, newest, middle], what="the new order")
        assert chat_list.chat_ids[chat_list.highlighted] == middle
        screen.sessions.stop(oldest)
        await idle(pilot)


# ------------------------------------------------------------------------------------ archive
@pytest.mark.parametrize("size", [SMALL, LARGE])
async def test_archiving_says_where_the_chat_went_and_opens_the_next_one(make_engine, store, size):
    app = BatonApp(engine=make_engine(), store=store)
    notes = record_notifications(app)
    async with app.run_test(size=size) as pilot:
        screen = await ready(pilot)
        oldest, middle, newest = [await new_chat(pilot) for _ in range(3)]
        chat_list = screen.query_one(ChatList)
        await wait_for(pilot, lambda: chat_list.chat_ids == [newest, middle, oldest], what="the three chats")
        await pilot.press("ctrl+l", "down", "enter")
        await wait_for(pilot, lambda: open_chat_id(pilot) == middle, what="the middle chat open")
        await pilot.press("f4")  # archive it: the next chat down opens, ready to type in
        await wait_for(pilot, lambda: open_chat_id(pilot) == oldest, what="the next chat open")
        await wait_for(pilot, lambda: middle not in chat_list.chat_ids, what="the archived chat hidden")
        assert (await store.get_chat(middle)).archived
        assert chat_list.chat_ids[chat_list.highlighted] == oldest
        assert isinstance(app.focused, PromptInput)
        assert any(title == "Chat archived" and "F5" in text and "F4" in text for _, title, text in notes), notes
        await pilot.press("f4")  # the last chat of the list archived: the one above opens
        await wait_for(pilot, lambda: open_chat_id(pilot) == newest, what="the chat above open")
        await pilot.press("f4")  # none left: the empty screen, where typing starts a new chat
        await wait_for(pilot, lambda: open_chat_id(pilot) is None and not chat_list.chat_ids, what="no chat open")
        assert isinstance(app.focused, PromptInput)
        await pilot.press("f5")  # the archived chats are listed: F4 on one brings it back
        await wait_for(pilot, lambda: len(chat_list.chat_ids) == 3, what="the archived chats listed")
        await pilot.press("ctrl+l", "enter")
        await wait_for(pilot, lambda: open_chat_id(pilot) is not None, what="an archived chat open")
        back = open_chat_id(pilot)
        await pilot.press("f4")
        await wait_for(pilot, lambda: any(title == "Chat unarchived" for _, title, _ in notes), what="a note")
        assert not (await store.get_chat(back)).archived and open_chat_id(pilot) == back
