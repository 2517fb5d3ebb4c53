"""`PathInput`: a one-line input for a file path, completing the name being typed from the file system.

The completion shows as a suggestion after the cursor (Textual's `Suggester`): → or Tab at the end of the
line takes it (Tab moves the focus on when there is nothing to take). `~` stands for the home folder.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from textual.binding import Binding
from textual.suggester import Suggester
from textual.widgets import Input


def expand(text: str) -> Path:
    """The path a user typed: surrounding blanks dropped, `~` expanded."""
    return Path(os.path.expanduser(text.strip()))


def complete(text: str) -> str | None:
    """`text` completed to the first entry (folders end in `/`) of its folder whose name starts with the part
    after the last `/`; hidden entries only when that part starts with `.`; None when nothing matches or
    that part is empty."""
    head, sep, prefix = text.rpartition(os.sep)
    if not prefix:
        return None
    folder = expand(head + sep) if sep else Path(".")
    try:
        with os.scandir(folder) as entries:
            names = sorted((e.name, _is_dir(e)) for e in entries
                           if e.name.startswith(prefix) and (prefix.startswith(".") or not e.name.startswith(".")))
    except OSError:  # no such folder, not readable
        return None
    for name, is_dir in names:
        if name != prefix or is_dir:
            return text + name[len(prefix):] + (os.sep if is_dir else "")
    return None


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


class PathSuggester(Suggester):
    """Suggests the completion of the path typed so far (`complete`), read in a thread."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)  # the folder may change while the dialog is open

    async def get_suggestion(self, value: str) -> str | None:
        return await asyncio.to_thread(complete, value)


class PathInput(Input):
    """An `Input` for a path with completion (→ or Tab takes it).

    Args:
        value: the initial text.
        **kwargs: as `Input`'s.
    """

    BINDINGS = [Binding("tab", "complete", "Complete the path", show=False)]

    def __init__(self, value: str = "", **kwargs) -> None:
        super().__init__(value, suggester=PathSuggester(), **kwargs)

    @property
    def path(self) -> Path:
        """The path typed (`~` expanded)."""
        return expand(self.value)

    def action_complete(self) -> None:
        """Take the completion shown after the cursor; with none, move the focus on as Tab does."""
        before = self.value
        if self.cursor_at_end:
            self.action_cursor_right()  # takes the suggestion when there is one
        if self.value == before:
            self.screen.focus_next()
