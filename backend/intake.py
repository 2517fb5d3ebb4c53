"""Checks on prompt text at request intake, before any tokenizer sees it (no torch).

- `text_problem`: a Python string can hold a lone surrogate (U+D800..U+DFFF, from JSON's `"\\ud83d"` or a
  `surrogateescape`d byte); it has no UTF-8 encoding, and a fast tokenizer fails on it with `TypeError`.
"""

from __future__ import annotations

import re

_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why `text` cannot be encoded as UTF-8 (a lone surrogate, named as an escape), or None when it can."""
    m = _LONE_SURROGATE.search(text)
    if m is None:
        return None
    return f"not valid UTF-8 text: a lone surrogate \\u{ord(m.group()):04x} at character {m.start()}"
