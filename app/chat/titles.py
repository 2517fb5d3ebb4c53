"""A chat's title from its first message: the TUI names a fresh "New chat" after it, and `baton chat` names the
chat it stores the same way, so a conversation is found under the same title wherever it started."""

from __future__ import annotations

#: the title of a chat the TUI created before its first message
DEFAULT_TITLE = "New chat"
#: the most characters of a title made from a first message, its ellipsis included
TITLE_LENGTH = 60


def title_from(text: str, limit: int = TITLE_LENGTH) -> str:
    """A chat title from its first message: the words that fit in `limit` characters, then `…` when some are
    left out (a single word longer than half of that is cut inside); `DEFAULT_TITLE` for a message without
    words. The TUI's chat list shortens it further to its own width."""
    words = " ".join(text.split())
    if len(words) <= limit:
        return words or DEFAULT_TITLE
    space = words.rfind(" ", 0, limit)  # the last word boundary that leaves room for the ellipsis
    head = words[:space] if space >= limit // 2 else words[:limit - 1]
    return head.rstrip(" ,;:-") + "…"
