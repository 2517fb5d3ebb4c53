"""The help screen (F1) at any terminal size (issue #10.7): its descriptions wrap rather than being cut in a
table that scrolls sideways, and the keys scroll it, so every line of it can be read at 60x20."""

from __future__ import annotations

import pytest

from app.tui import BatonApp
from app.tui.screens.help import HelpScreen
from tui_support import config_dir, ready, wait_for  # noqa: F401
from tui_text import screen_lines


def shown_text(app, widget) -> str:
    """The words a widget shows on screen now (its scrollable area, lines joined, spaces collapsed)."""
    region = widget.scrollable_content_region
    lines = screen_lines(app)[region.y:region.bottom]
    return " ".join(" ".join(line[region.x:region.right] for line in lines).split())


@pytest.mark.parametrize("size", [(60, 20), (80, 24), (160, 45)])
async def test_every_help_line_can_be_read_whole_by_scrolling_with_the_keys(make_engine, tmp_path, size):
    app = BatonApp(engine=make_engine(), db_path=tmp_path / "baton.db")
    async with app.run_test(size=size) as pilot:
        await ready(pilot)
        await pilot.press("f1")
        help_screen = await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen) and app.screen)
        dialog = help_screen.query_one("#help-dialog")
        await pilot.pause()
        assert dialog.region.right <= size[0] and dialog.max_scroll_x == 0  # on screen, nothing sideways
        wanted = {f"{keys} {what}" for keys, what in help_screen.rows()}
        seen: set[str] = set()
        for _ in range(200):
            text = shown_text(app, dialog)
            seen |= {row for row in wanted if row in text}
            if dialog.scroll_y >= dialog.max_scroll_y:
                break
            await pilot.press("down")
            await pilot.wait_for_animation()
            await pilot.pause()
        assert sorted(wanted - seen) == []
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen), what="the help to close")
