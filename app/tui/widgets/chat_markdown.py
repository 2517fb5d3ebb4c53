"""The Markdown parser of chat messages: a single line break is a line break, as in chat apps (GitHub's `breaks`).

CommonMark joins the lines of a paragraph (a newline is a `softbreak`, shown as a space), so a poem or an
address written line by line came out as one paragraph. markdown-it-py honours its `breaks` option only in its
HTML renderer, and Textual's `Markdown` widget reads the tokens (a `softbreak` is a space there, a `hardbreak` a
new line), so the `breaks` option alone changes nothing on screen: `hard_breaks` turns each `softbreak` of
inline text into a `hardbreak` when `breaks` is on. Code (fenced, indented, inline) has no breaks tokens, so it
is unaffected; so are lists and tables, which are blocks of their own.

    Markdown(text, parser_factory=chat_parser)
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore

__all__ = ["chat_parser", "hard_breaks"]


def hard_breaks(state: StateCore) -> None:
    """A markdown-it core rule: with the `breaks` option, every soft line break in inline text becomes hard."""
    if not state.md.options.breaks:
        return
    for token in state.tokens:
        for child in token.children or ():
            if child.type == "softbreak":
                child.type = "hardbreak"


def chat_parser() -> MarkdownIt:
    """The parser of chat messages: Textual's default ("gfm-like") with `breaks` on."""
    parser = MarkdownIt("gfm-like", {"breaks": True})
    parser.core.ruler.after("inline", "hard_breaks", hard_breaks)
    return parser
