"""Focus follows the user (issue #10.3): after choosing a chat in the list, or deleting the open one, what the
user types goes into the prompt, not into the list."""

from __future__ import annotations

import pytest

from app.tui import BatonApp
from app.tui.screens.confirm import ConfirmScreen
from app.tui.widgets.chat_list import ChatList
from app.tui.widgets.prompt_input import PromptInput
from storage import Store
from tui_support import new_chat, open_chat_id, ready, wait_for

SIZE = (120, 36)


@pytest.fixture
def engine(make_engine):
    return make_engine()


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "baton.db")
    yield store
    await store.close()


async def test_choosing_a_chat_in_the_list_puts_the_cursor_in_the_prompt(engine, store):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        first = await new_chat(pilot)
        second = await new_chat(pilot)
        await pilot.press("ctrl+l")
        chat_list = screen.query_one(ChatList)
        assert app.focused is chat_list
        assert chat_list.chat_ids[:2] == [second, first] and chat_list.highlighted == 0  # newest first, open
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: open_chat_id(pilot) == first, what="the chosen chat to open")
        await wait_for(pilot, lambda: isinstance(app.focused, PromptInput), what="the prompt focused")
        await pilot.press(*"hi")
        assert screen.query_one(PromptInput).text == "hi"


async def test_deleting_the_open_chat_puts_the_cursor_in_the_prompt(engine, store):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        keep = await new_chat(pilot)
        doomed = await new_chat(pilot)
        await pilot.press("ctrl+l")
        await pilot.press("f8")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        await pilot.press("y")
        chat_list = screen.query_one(ChatList)
        await wait_for(pilot, lambda: doomed not in chat_list.chat_ids, what="the chat deleted")
        await wait_for(pilot, lambda: isinstance(app.focused, PromptInput), what="the prompt focused")
        await pilot.press(*"typed")
        assert screen.query_one(PromptInput).text == "typed"
        assert keep in chat_list.chat_ids
