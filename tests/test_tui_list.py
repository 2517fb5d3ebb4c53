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
from storage import Store
from tui_support import config_dir, ready  # noqa: F401
from tui_text import screen_lines

SMALL, LARGE = (80, 24), (160, 45)


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
