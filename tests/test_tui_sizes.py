"""The TUI at small terminal sizes (issue #10.1): with the live panel open, an 80x24 terminal used to kill the
app at start (rich's `chop_cells` on a zero-width prompt placeholder), and so did resizing a running app from
160x45 to 80x24. The panel gives way (it moves under the chat) before the chat gets narrow."""

from __future__ import annotations

import pytest

from app.tui import BatonApp
from app.tui.widgets.chat_pane import ChatPane
from app.tui.widgets.live_panel import LivePanel
from app.tui.widgets.prompt_input import PromptInput
from tui_support import ready, wait_for, write_preferences

MIN_CHAT_WIDTH = 40  # columns the open chat keeps at least, from 80 columns up


@pytest.fixture(autouse=True)
def panel_open(tmp_path, monkeypatch):
    folder = tmp_path / "config"
    write_preferences(folder, show_panel=True, theme="baton-dark")
    monkeypatch.setenv("BATON_CONFIG_DIR", str(folder))


@pytest.mark.parametrize("size", [(60, 20), (80, 24), (100, 30), (160, 45)])
async def test_the_app_starts_with_the_panel_open_at_any_size(make_engine, tmp_path, size):
    app = BatonApp(engine=make_engine(), db_path=tmp_path / "baton.db")
    async with app.run_test(size=size) as pilot:
        screen = await ready(pilot)
        await wait_for(pilot, lambda: screen.query(LivePanel), what="the live panel")
        await pilot.pause()
        pane, prompt = screen.query_one(ChatPane), screen.query_one(PromptInput)
        assert prompt.size.width > 0
        assert pane.size.width >= min(MIN_CHAT_WIDTH, size[0] - 24), (size, pane.size)
        await pilot.press(*"hello")
        assert prompt.text == "hello"
    assert app.return_code in (0, None)


async def test_resizing_a_running_app_from_160x45_to_80x24_and_back(make_engine, tmp_path):
    app = BatonApp(engine=make_engine(), db_path=tmp_path / "baton.db")
    async with app.run_test(size=(160, 45)) as pilot:
        screen = await ready(pilot)
        await wait_for(pilot, lambda: screen.query(LivePanel), what="the live panel")
        for size in [(80, 24), (60, 20), (160, 45)]:
            await pilot.resize_terminal(*size)
            await pilot.pause()
            await pilot.pause()
            pane = screen.query_one(ChatPane)
            assert pane.size.width >= min(MIN_CHAT_WIDTH, size[0] - 24), (size, pane.size)
        await pilot.press(*"still here")
        assert screen.query_one(PromptInput).text == "still here"
    assert app.return_code in (0, None)
