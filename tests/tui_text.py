"""The text a running app shows: what a person reads on the terminal, for assertions on layout."""

from __future__ import annotations

import io

from rich.console import Console


def screen_lines(app) -> list[str]:
    """Each line of the app's current screen as plain text, right-trimmed (as `export_screenshot` draws it)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True,
                      color_system="truecolor", legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return [line.rstrip() for line in console.export_text(styles=False).splitlines()]
