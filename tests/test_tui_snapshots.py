"""Snapshot tests of the TUI (pytest-textual-snapshot): the chat screen, the settings modal, the help screen.

Baselines live in tests/__snapshots__/test_tui_snapshots/; after an intended change to the look, review and
update them with `pytest tests/test_tui_snapshots.py --snapshot-update`. Every screenshot is deterministic:
a fixed terminal size, a stored conversation with fixed stats, the live panel closed (no live numbers), no
timestamps on screen, and the prompt's cursor not blinking.
"""

from __future__ import annotations

import pytest
from textual.widgets import Input, TextArea

from app.tui import BatonApp
from app.tui.widgets.chat_view import ChatView
from app.tui.widgets.prompt_input import PromptInput
from tui_support import choose_chat, ready, run, stored_conversation, wait_for, write_preferences

TERMINAL = (110, 32)


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    folder = tmp_path / "config"
    write_preferences(folder, show_panel=False, theme="baton-dark")
    monkeypatch.setenv("BATON_CONFIG_DIR", str(folder))
    return folder


@pytest.fixture(autouse=True)
def no_cursor_blink(monkeypatch):
    """Cursors stay on: a blink could land either way in a screenshot."""
    monkeypatch.setattr(TextArea, "_toggle_cursor_blink_visible", lambda self: None)
    monkeypatch.setattr(Input, "_toggle_cursor", lambda self: None)


@pytest.fixture
def app(make_engine, tmp_path):
    """The app on the tiny engine (started) over a database holding two finished chats."""
    db = tmp_path / "baton.db"
    ids = run(stored_conversation(db))
    app = BatonApp(engine=make_engine(), db_path=db)
    app.rome_id = ids["rome"]
    return app


async def show_rome(pilot) -> None:
    """Open the Rome chat (Markdown, a code block, stats) with the prompt focused."""
    await ready(pilot)
    await choose_chat(pilot, pilot.app.rome_id)
    view = pilot.app.chat_screen.query_one(ChatView)
    await wait_for(pilot, lambda: len(view.messages()) == 2, what="the conversation")
    pilot.app.chat_screen.query_one(PromptInput).focus()
    await pilot.pause()


def test_chat_screen_with_a_stored_conversation(snap_compare, app):
    assert snap_compare(app, terminal_size=TERMINAL, run_before=show_rome)


def test_settings_modal(snap_compare, app):
    assert snap_compare(app, terminal_size=TERMINAL, run_before=show_rome, press=["f3"])


def test_help_screen(snap_compare, app):
    assert snap_compare(app, terminal_size=TERMINAL, run_before=show_rome, press=["f1"])


def test_help_screen_at_80x24(snap_compare, app):
    assert snap_compare(app, terminal_size=(80, 24), run_before=show_rome, press=["f1"])
