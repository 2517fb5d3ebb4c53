"""Checks that user input holds only values the engine and the store can take.

- Text: a Python `str` can hold a lone surrogate (U+D800..U+DFFF): JSON's `"\\ud83d"` escape, YAML's, or a
  command line argument whose bytes were not UTF-8 (Python's `surrogateescape`) all make one. Such a string
  cannot be encoded as UTF-8, so a tokenizer or SQLite fails on it.
- Numbers: Python's `json` reads `NaN`, `Infinity` and `-Infinity` (not JSON, RFC 8259 §6) and turns `1e999`
  into `inf`; YAML has `.nan` and `.inf`. The store keeps requests as JSON (`CHECK (json_valid(...))`), so a
  number that is not finite cannot be stored.

Every parser of user input refuses such values, naming the field, so only that request or line fails.
Text is checked with the engine's own `backend.text_problem` (torch-free), so the app and the engine's
intake refuse exactly the same strings.
"""

from __future__ import annotations

import math
from typing import Any

from backend import text_problem  # the engine's own intake check: one definition

__all__ = ["text_problem", "value_problem"]


def value_problem(value: Any, path: str) -> str | None:
    """The first string (a value or a mapping key) inside a JSON-like value that is not valid UTF-8 text, or
    float that is not finite.

    Walks dicts, lists and tuples without recursion (deep nesting is fine) and each container once (a YAML
    alias is not walked again). Other values are not looked at.
    Args:
        value: a parsed JSON or YAML value.
        path: the name of `value` in messages, e.g. `body` (`body.messages[0].content` for a nested field).
    Returns:
        `<path of the field>: <text_problem>` or `<path>: nan is not a finite number (...)`, or None when every
        string and number is valid.
    """
    stack: list[tuple[Any, str]] = [(value, path)]
    seen: set[int] = set()
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                return f"{where}: {problem}"
        elif isinstance(item, float) and not math.isfinite(item):
            return f"{where}: {item} is not a finite number (JSON has no NaN or Infinity)"
        elif isinstance(item, (dict, list, tuple)) and id(item) not in seen:
            seen.add(id(item))
            if isinstance(item, dict):
                children = []
                for key, child in item.items():
                    name = _field_name(where, key)
                    if isinstance(key, str) and (problem := text_problem(key)) is not None:
                        return f"{where}: a field name is {problem}"
                    children.append((child, name))
            else:
                children = [(child, f"{where}[{i}]") for i, child in enumerate(item)]
            stack.extend(reversed(children))  # depth first, in document order
    return None


def _field_name(where: str, key: Any) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f"{where}.{key}" if where else key
    return f"{where}[{key!r}]"
