"""Uploaded files in the store (`Store.create_file` / `get_file` / `file_content`): kept whole across a reopen,
ids never reused."""

from __future__ import annotations

import pytest

from storage import NotFoundError, Store


async def test_a_file_is_kept_whole_across_a_reopen(tmp_path):
    path = tmp_path / "baton.db"
    content = b'{"custom_id": "a"}\n' + bytes(range(256))  # any bytes, not only text
    async with await Store.open(path) as store:
        first = await store.create_file("batch", "in.jsonl", content)
        assert (first.purpose, first.filename, first.bytes) == ("batch", "in.jsonl", len(content))
    async with await Store.open(path) as store:
        assert await store.get_file(first.id) == first
        assert await store.file_content(first.id) == content
        second = await store.create_file("other", "b.txt", b"")
        assert second.id > first.id
        assert [f.id for f in await store.list_files()] == [second.id, first.id]
        assert await store.list_files("batch") == [first]
        assert await store.get_file(second.id + 1) is None
        with pytest.raises(NotFoundError, match="file 99 does not exist"):
            await store.file_content(99)
        with pytest.raises(TypeError):
            await store.create_file("batch", "x", "text")  # type: ignore[arg-type]
