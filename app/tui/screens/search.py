"""Full-text search over every chat's messages; choosing a hit opens its chat."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from storage import SearchHit

from ..messages import SearchFinished

MARKS = ("«", "»")
DEBOUNCE_S = 0.15


def hit_prompt(hit: SearchHit) -> Content:
    """Two lines: the chat's title and who said it, then the snippet with the matches highlighted."""
    head = Content.assemble((hit.chat.title, "bold"), (f"  · {hit.message.role}", "dim"))
    if hit.chat.archived:
        head = Content.assemble(head, (" · archived", "dim"))
    parts: list[str | tuple[str, str]] = []
    text = " ".join(hit.snippet.split())
    while MARKS[0] in text and MARKS[1] in text:
        before, rest = text.split(MARKS[0], 1)
        match, text = rest.split(MARKS[1], 1)
        parts += [before, (match, "bold reverse")]
    parts.append(text)
    return Content.assemble(head, "\n", *parts)


class SearchScreen(ModalScreen[SearchHit | None]):
    """Type to search (every word must occur, as a word prefix); Enter on a hit opens its chat.

    Args:
        search: the store's search coroutine function, `search(query, marks=...) -> list[SearchHit]`.
    """

    BINDINGS = [Binding("escape", "dismiss_none", "Close"), Binding("down", "to_results", show=False)]

    def __init__(self, search: Callable[..., Awaitable[list[SearchHit]]]) -> None:
        super().__init__(classes="dialog-screen")
        self._search = search
        self._hits: list[SearchHit] = []

    def compose(self) -> ComposeResult:
        """The query, the match count and the results."""
        with Vertical(classes="dialog", id="search-dialog") as box:
            box.border_title = "Search history"
            yield Input(placeholder="Search every message…", id="search-input")
            yield Static("", id="search-count", markup=False)
            yield OptionList(id="search-results")

    @on(Input.Changed, "#search-input")
    def _changed(self, event: Input.Changed) -> None:
        self.app.run_worker(self._run(event.value), group="search", exclusive=True, exit_on_error=False)

    async def _run(self, query: str) -> None:
        """Worker: search after a short pause in typing, then post the hits."""
        await asyncio.sleep(DEBOUNCE_S)
        hits = await self._search(query, marks=MARKS) if query.strip() else []
        self.post_message(SearchFinished(query, hits))

    @on(SearchFinished)
    def _show(self, event: SearchFinished) -> None:
        if event.query != self.query_one("#search-input", Input).value:
            return  # a newer query is on its way
        self._hits = event.hits
        results = self.query_one("#search-results", OptionList)
        results.set_options(Option(hit_prompt(hit), id=str(i)) for i, hit in enumerate(event.hits))
        if event.hits:
            results.highlighted = 0
        count = f"{len(event.hits)} match{'es' if len(event.hits) != 1 else ''}" if event.query.strip() else ""
        self.query_one("#search-count", Static).update(count)

    @on(Input.Submitted, "#search-input")
    def _submit(self) -> None:
        results = self.query_one("#search-results", OptionList)
        if results.highlighted is not None and self._hits:
            self.dismiss(self._hits[results.highlighted])

    @on(OptionList.OptionSelected, "#search-results")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self._hits[event.option_index])

    def action_to_results(self) -> None:
        """Move from the query to the results."""
        self.query_one("#search-results", OptionList).focus()

    def action_dismiss_none(self) -> None:
        """Close without opening anything."""
        self.dismiss(None)
