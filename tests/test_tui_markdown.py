"""Messages' Markdown as chat apps show it (issue #10.7): a single line break is a line break.

CommonMark joins a paragraph's lines (a poem came out as one line); the chat parser turns soft breaks into
hard ones, outside code, lists and tables unchanged. Asserted on the rendered lines of the widgets.
"""

from __future__ import annotations

import pytest
from textual.geometry import Region
from textual.widgets.markdown import MarkdownFence

from app.tui import BatonApp
from app.tui.widgets.chat_markdown import chat_parser
from app.tui.widgets.chat_view import ChatView
from storage import Store
from tui_support import choose_chat, config_dir, ready, wait_for  # noqa: F401

POEM = "Roses are red,\nviolets are blue."
ANSWER = f"{POEM}\n\n```python\nx = 1\ny = 2\n```\n\n- one\n- two\n"


def rendered_lines(widget) -> list[str]:
    """The text of each line the widget draws, right-trimmed."""
    return [strip.text.rstrip() for strip in widget.render_lines(Region(0, 0, *widget.size))]


def test_single_newlines_are_hard_breaks_and_code_keeps_its_lines():
    tokens = chat_parser().parse(ANSWER + "\nlast  \nline\n")
    inline_types = [child.type for token in tokens for child in token.children or ()]
    assert "softbreak" not in inline_types
    assert inline_types.count("hardbreak") == 2  # the poem's, and the two-space one that was already hard
    fence = next(token for token in tokens if token.type == "fence")
    assert fence.content == "x = 1\ny = 2\n"
    assert [t.type for t in tokens].count("list_item_open") == 2


@pytest.mark.parametrize("size", [(80, 24), (120, 36)])
async def test_a_two_line_poem_shows_as_two_lines(make_engine, tmp_path, size):
    async with await Store.open(tmp_path / "baton.db") as store:
        chat = await store.create_chat("Poem", None, {})
        user = await store.add_message(chat.id, "user", "A poem, please.")
        answer = await store.start_assistant_message(chat.id, user.id, "random:tiny")
        await store.finish_message(answer.id, ANSWER, "stop", 5, 20, 10.0, 50.0)
        app = BatonApp(engine=make_engine(), store=store)
        async with app.run_test(size=size) as pilot:
            screen = await ready(pilot)
            await choose_chat(pilot, chat.id)
            view = screen.query_one(ChatView)
            await wait_for(pilot, lambda: len(view.messages()) == 2, what="the conversation")
            body = view.messages()[1]
            # the Markdown mounts its blocks, then they are laid out: wait for the poem to have a size (on a busy
            # machine one `pause` was not always enough, and it rendered no lines at all)
            await wait_for(pilot, lambda: body.query("MarkdownParagraph") and
                           body.query("MarkdownParagraph").first().size.height > 0, what="the poem laid out")
            poem = body.query("MarkdownParagraph").first()
            assert rendered_lines(poem)[:2] == ["Roses are red,", "violets are blue."]
            assert poem.size.height == 2
            assert body.query_one(MarkdownFence).code == "x = 1\ny = 2"
            items = body.query("MarkdownBulletList MarkdownParagraph")
            assert [rendered_lines(item)[0] for item in items] == ["one", "two"]


async def test_a_streamed_poem_shows_its_line_breaks(make_engine, tmp_path):
    async with await Store.open(tmp_path / "baton.db") as store:
        app = BatonApp(engine=make_engine(), store=store)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await ready(pilot)
            view = screen.query_one(ChatView)
            answer = await view.begin_answer()
            for piece in ("Roses are ", "red,\nviolets", " are blue.\n"):
                await view.append(piece)
            await wait_for(pilot, lambda: (p := answer.query("MarkdownParagraph")) and p.first().size.height == 2,
                           what="the streamed poem on two lines")
            assert rendered_lines(answer.query("MarkdownParagraph").first()) == ["Roses are red,", "violets are blue."]
