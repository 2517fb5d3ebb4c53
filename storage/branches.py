"""A chat's messages as a tree of alternatives, and the one branch of it a chat shows (pure functions, no SQL).

Every message's `parent_id` is the message it follows (None for a chat's first message). A regenerated answer
is a sibling of the answer it replaces (the same parent), so the answers to one message are alternatives of
each other, ordered by id (oldest first). The chat shows one **branch**: the path from a first message down to
its **tip**:

- the tip is the chat's `current_message_id` (set to each new message, and by `Store.show_message` /
  `Store.show_alternative`), or, when that is unset (a database from before branches, or the message was
  deleted), the chat's newest message;
- from there the tip goes down to the newest message below it (the same rule that picks the branch shown when
  the user pages to an alternative: the most recent conversation under it), so a tip is always a leaf.

A message whose parent is missing (deleted: `ON DELETE SET NULL`) counts as a first message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: (message id, parent id) pairs of one chat
Links = Iterable[tuple[int, "int | None"]]


def parents_of(links: Links) -> dict[int, int | None]:
    """message id -> parent id, a missing parent read as None (a first message)."""
    parents = dict(links)
    return {mid: (p if p in parents else None) for mid, p in parents.items()}


def newest_below(parents: Mapping[int, int | None], message_id: int) -> int:
    """The newest (largest id) message in the subtree of `message_id`, itself included."""
    return max(subtree(parents, message_id))


def tip(parents: Mapping[int, int | None], current: int | None) -> int | None:
    """The last message of the shown branch (see the module docstring); None for a chat without messages."""
    if not parents:
        return None
    start = current if current in parents else max(parents)
    return newest_below(parents, start)


def path_to(parents: Mapping[int, int | None], message_id: int) -> list[int]:
    """The ids from the first message down to `message_id` (oldest first); stops at a cycle (a damaged file)."""
    path, seen = [], set()
    node: int | None = message_id
    while node is not None and node not in seen:
        seen.add(node)
        path.append(node)
        node = parents.get(node)
    return path[::-1]


def siblings(parents: Mapping[int, int | None], message_id: int) -> tuple[int, ...]:
    """The alternatives of `message_id`: the messages with its parent, itself included, oldest first."""
    parent = parents[message_id]
    return tuple(sorted(mid for mid, p in parents.items() if p == parent))


def alternatives(parents: Mapping[int, int | None], path: list[int]) -> dict[int, tuple[int, ...]]:
    """For each message of `path`, its alternatives (`siblings`), in one pass over the chat."""
    by_parent: dict[int | None, list[int]] = {}
    for mid in sorted(parents):
        by_parent.setdefault(parents[mid], []).append(mid)
    return {mid: tuple(by_parent[parents[mid]]) for mid in path}


def subtree(parents: Mapping[int, int | None], message_id: int) -> list[int]:
    """`message_id` and every message below it, by id (the messages that only exist as its continuation)."""
    children: dict[int | None, list[int]] = {}
    for mid, parent in parents.items():
        children.setdefault(parent, []).append(mid)
    below, todo = {message_id}, [message_id]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in below:  # a cycle only in a damaged file
                below.add(child)
                todo.append(child)
    return sorted(below)
