"""The storage layer on real SQLite files: schema upgrades, chats, streaming messages, search, jobs, export."""

from __future__ import annotations

import os

import asyncio
import json
import sqlite3
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import storage.db as sdb
import storage.migrations as migrations
from storage import NotFoundError, StorageError, Store
from storage.rows import fts_query


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(tmp_path / "baton.db")
    yield s
    await s.close()


def user_version(path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def assert_write_lock_free(path) -> None:
    """Another connection can take the write lock at once: the store holds no open transaction."""
    other = sqlite3.connect(path, isolation_level=None, timeout=0.1)
    try:
        other.execute("BEGIN IMMEDIATE")  # "database is locked" if the store still held a transaction
        other.execute("ROLLBACK")
    finally:
        other.close()


def exited_pid() -> int:
    """The pid of a process that has exited (and been waited for)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert proc.wait(timeout=60) == 0
    return proc.pid


# ---- schema and connection -------------------------------------------------------------------

async def test_migrates_an_empty_file_and_reopens_idempotently(tmp_path):
    path = tmp_path / "baton.db"
    path.touch()  # version 0: an empty file
    async with await Store.open(path) as s:
        assert await s.schema_version() == migrations.LATEST >= 1
        chat = await s.create_chat("kept")
    assert user_version(path) == migrations.LATEST
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"chat", "message", "message_fts", "job", "job_item"} <= tables
    async with await Store.open(path) as s:  # nothing re-applied, nothing lost
        assert await s.schema_version() == migrations.LATEST
        assert [c.id for c in await s.list_chats()] == [chat.id]


async def test_an_explicit_path_in_a_missing_folder_is_refused(tmp_path):
    """A mistyped path must not silently start a new, empty history: only the default folder is created."""
    path = tmp_path / "a" / "b" / "baton.db"
    with pytest.raises(StorageError, match=f"folder {tmp_path / 'a' / 'b'} does not exist") as info:
        await Store.open(path)
    assert str(info.value).startswith(f"{path}: ") and info.value.path == str(path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a" / "b").mkdir(parents=True)  # once the folder is there, the file is created in it
    async with await Store.open(path) as s:
        await s.create_chat("x")
    assert path.is_file()


async def test_default_path_is_the_user_data_dir(tmp_path, monkeypatch):
    if sys.platform != "linux":
        pytest.skip("XDG_DATA_HOME is how platformdirs is redirected on Linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    async with await Store.open() as s:
        assert s.path == str(tmp_path / "data" / "baton" / "baton.db")
        await s.create_chat("x")
    assert (tmp_path / "data" / "baton" / "baton.db").is_file()


async def test_in_memory_store_for_tests():
    async with await Store.open(":memory:") as s:
        chat = await s.create_chat("scratch")
        await s.add_message(chat.id, "user", "ephemeral words")
        assert s.path == ":memory:" and len(await s.search("ephemeral")) == 1


async def test_steps_apply_in_order_each_bumping_the_version(tmp_path, monkeypatch):
    path = tmp_path / "baton.db"
    async with await Store.open(path):
        pass
    seen = []

    async def data_step(conn):
        seen.append((await conn.execute_fetchall("PRAGMA user_version"))[0][0])

    extra = migrations.STEPS + (
        migrations.Step("add a column", ("ALTER TABLE chat ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0",)),
        migrations.Step("python step", run=data_step),
    )
    base = migrations.LATEST
    monkeypatch.setattr(migrations, "STEPS", extra)
    conn = await sdb.connect(str(path), 1.0)
    try:
        assert await migrations.check_compatible(conn, str(path), extra) == base
        assert await migrations.migrate(conn, extra) == base + 2
        assert await migrations.migrate(conn, extra) == base + 2
    finally:
        await conn.close()
    assert seen == [base + 1]  # the python step ran once, inside its own step (version not yet bumped)
    assert user_version(path) == base + 2
    with sqlite3.connect(path) as conn:
        assert "pinned" in [r[1] for r in conn.execute("PRAGMA table_info(chat)")]


async def test_a_failing_step_is_rolled_back(tmp_path):
    path = tmp_path / "baton.db"
    async with await Store.open(path):
        pass
    bad = migrations.STEPS + (migrations.Step("broken", ("CREATE TABLE extra (x)", "THIS IS NOT SQL")),)
    conn = await sdb.connect(str(path), 1.0)
    try:
        with pytest.raises(sqlite3.Error):
            await migrations.migrate(conn, bad)
    finally:
        await conn.close()
    assert user_version(path) == migrations.LATEST
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT count(*) FROM sqlite_master WHERE name = 'extra'").fetchone()[0] == 0


async def test_a_step_leaving_a_dangling_foreign_key_is_rolled_back(tmp_path):
    path = tmp_path / "baton.db"
    async with await Store.open(path):
        pass
    orphan = ("INSERT INTO message (chat_id, role, created_at, updated_at) VALUES (99, 'user', 'x', 'x')",)
    conn = await sdb.connect(str(path), 1.0)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="dangling foreign key"):
            await migrations.migrate(conn, migrations.STEPS + (migrations.Step("orphan", orphan),))
        assert (await conn.execute_fetchall("PRAGMA foreign_keys"))[0][0] == 1  # back on for the connection
    finally:
        await conn.close()
    assert user_version(path) == migrations.LATEST
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT count(*) FROM message").fetchone()[0] == 0


async def test_a_newer_schema_is_a_clear_error_and_left_alone(tmp_path):
    path = tmp_path / "baton.db"
    async with await Store.open(path):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {migrations.LATEST + 5}")
    before = path.read_bytes()
    with pytest.raises(StorageError, match="newer Baton") as info:
        await Store.open(path)
    assert str(path) in str(info.value) and info.value.path == str(path)
    assert path.read_bytes() == before


async def test_another_applications_database_is_refused(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    before = path.read_bytes()
    with pytest.raises(StorageError, match="not a Baton history.*notes"):
        await Store.open(path)
    assert path.read_bytes() == before


async def test_wal_and_foreign_keys_are_on(store):
    assert store.journal_mode == "wal"
    assert (await store._fetchone("PRAGMA journal_mode"))[0] == "wal"
    assert (await store._fetchone("PRAGMA foreign_keys"))[0] == 1
    assert (await store._fetchone("PRAGMA busy_timeout"))[0] == 5000


async def test_closed_store_raises_storage_error(tmp_path):
    s = await Store.open(tmp_path / "baton.db")
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        await s.list_chats()


# ---- chats -----------------------------------------------------------------------------------

async def test_chat_crud_and_ordering(store):
    a = await store.create_chat("first", system_prompt="be brief", params={"temperature": 0.2})
    b = await store.create_chat("second")
    assert (a.title, a.system_prompt, a.params, a.archived) == ("first", "be brief", {"temperature": 0.2}, False)
    assert b.params == {} and b.system_prompt is None
    assert [c.id for c in await store.list_chats()] == [b.id, a.id]

    await store.add_message(a.id, "user", "hello")  # a message bumps the chat to the top
    assert [c.id for c in await store.list_chats()] == [a.id, b.id]

    renamed = await store.rename_chat(b.id, "renamed")
    assert renamed.title == "renamed" and (await store.get_chat(b.id)).title == "renamed"
    updated = await store.update_chat_settings(a.id, "be verbose", {"top_p": 0.9})
    assert (updated.system_prompt, updated.params) == ("be verbose", {"top_p": 0.9})

    await store.archive_chat(a.id)
    assert [c.id for c in await store.list_chats()] == [b.id]
    assert {c.id for c in await store.list_chats(include_archived=True)} == {a.id, b.id}
    assert (await store.get_chat(a.id)).archived
    await store.archive_chat(a.id, archived=False)
    assert {c.id for c in await store.list_chats()} == {a.id, b.id}

    assert await store.get_chat(9999) is None
    with pytest.raises(NotFoundError, match="chat 9999"):
        await store.rename_chat(9999, "x")


async def test_delete_chat_cascades_to_messages(store):
    chat = await store.create_chat("doomed")
    q = await store.add_message(chat.id, "user", "question")
    await store.add_message(chat.id, "assistant", "answer", parent_id=q.id)
    other = await store.create_chat("kept")
    await store.add_message(other.id, "user", "stays")
    assert await store.delete_chat(chat.id) is True
    assert await store.delete_chat(chat.id) is False
    assert await store.get_chat(chat.id) is None
    assert await store.list_messages(chat.id) == []
    assert await store.get_message(q.id) is None
    assert [m.content for m in await store.list_messages(other.id)] == ["stays"]
    with pytest.raises(NotFoundError):
        await store.add_message(chat.id, "user", "into the void")


# ---- messages --------------------------------------------------------------------------------

async def test_streaming_lifecycle(store):
    chat = await store.create_chat("stream")
    user = await store.add_message(chat.id, "user", "Tell me about pelicans")
    assert user.finish_reason is None and not user.streaming

    answer = await store.start_assistant_message(chat.id, user.id, "smollm2")
    assert answer.streaming and answer.content == "" and answer.parent_id == user.id
    await store.update_message_text(answer.id, "Pelicans are")
    await store.update_message_text(answer.id, "Pelicans are large water birds")
    mid = await store.get_message(answer.id)
    assert mid.content == "Pelicans are large water birds" and mid.streaming

    done = await store.finish_message(answer.id, "Pelicans are large water birds with pouches.", "stop",
                                      prompt_tokens=12, completion_tokens=9, ttft_ms=85.5, tokens_per_s=41.2)
    assert not done.streaming
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens, done.ttft_ms, done.tokens_per_s,
            done.model) == ("stop", 12, 9, 85.5, 41.2, "smollm2")
    assert done.updated_at > done.created_at

    messages = await store.list_messages(chat.id)
    assert [(m.role, m.content) for m in messages] == [
        ("user", "Tell me about pelicans"), ("assistant", "Pelicans are large water birds with pouches.")]

    with pytest.raises(ValueError, match="finish_reason"):
        await store.finish_message(answer.id, "x", "exploded")
    with pytest.raises(ValueError, match="role"):
        await store.add_message(chat.id, "robot", "x")
    with pytest.raises(NotFoundError):
        await store.update_message_text(123456, "x")
    with pytest.raises(NotFoundError):  # foreign keys are enforced
        await store.add_message(chat.id, "user", "orphan", parent_id=123456)
    assert len(await store.list_messages(chat.id)) == 2


async def test_concurrent_writes_are_serialized(store):
    chat = await store.create_chat("busy")
    await asyncio.gather(*(store.add_message(chat.id, "user", f"m{i}") for i in range(30)))
    assert sorted(m.content for m in await store.list_messages(chat.id)) == sorted(f"m{i}" for i in range(30))


async def test_cancelled_writes_never_leave_a_transaction_open(store):
    chat = await store.create_chat("cancel")
    tasks = [asyncio.create_task(store.add_message(chat.id, "user", f"m{i}")) for i in range(20)]
    for _ in range(3):
        await asyncio.sleep(0)
    for t in tasks[::2]:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await store.add_message(chat.id, "user", "after")
    stored = {m.content for m in await store.list_messages(chat.id)}
    assert {f"m{i}" for i in range(1, 20, 2)} | {"after"} <= stored
    assert_write_lock_free(store.path)


async def test_a_write_cancelled_inside_its_transaction_is_rolled_back(store, monkeypatch):
    """The task is cancelled after `BEGIN IMMEDIATE` and its first statement, before COMMIT: nothing of it
    is stored, the write lock is released, and the next write goes through."""
    chat = await store.create_chat("cancel mid-transaction")
    inside, real_run = asyncio.Event(), store._run

    async def slow_run(sql, params=()):
        result = await real_run(sql, params)
        if sql.startswith("UPDATE chat SET updated_at"):  # the first statement of add_message's transaction
            inside.set()
            await asyncio.sleep(60)
        return result

    monkeypatch.setattr(store, "_run", slow_run)
    task = asyncio.create_task(store.add_message(chat.id, "user", "never stored"))
    await asyncio.wait_for(inside.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    monkeypatch.setattr(store, "_run", real_run)
    assert_write_lock_free(store.path)
    await store.add_message(chat.id, "user", "after")
    assert [m.content for m in await store.list_messages(chat.id)] == ["after"]


async def test_delete_messages_after_cuts_a_transcript_back(store):
    chat = await store.create_chat("transcript")
    u1 = await store.add_message(chat.id, "user", "one")
    a1 = await store.add_message(chat.id, "assistant", "uno", parent_id=u1.id)
    u2 = await store.add_message(chat.id, "user", "two", parent_id=a1.id)
    await store.add_message(chat.id, "assistant", "dos", parent_id=u2.id)
    other = await store.create_chat("other")
    o = await store.add_message(other.id, "user", "untouched")

    assert await store.delete_messages_after(chat.id, u2.id) == 1  # an interrupted step's answer
    assert [m.content for m in await store.list_messages(chat.id)] == ["one", "uno", "two"]
    assert await store.delete_messages_after(chat.id, u2.id, inclusive=True) == 1  # and its prompt
    assert [m.content for m in await store.list_messages(chat.id)] == ["one", "uno"]
    assert [m.content for m in (await store.branch(chat.id)).messages] == ["one", "uno"]
    assert await store.get_message(o.id) is not None


# ---- branches: regenerated answers are kept as alternatives ------------------------------------

async def answer(store, chat_id, parent_id, text):
    """A finished assistant answer to `parent_id` (as `AnswerRecorder` stores one)."""
    started = await store.start_assistant_message(chat_id, parent_id, "random:tiny", text[:2])
    return await store.finish_message(started.id, text, "stop", 3, 4, 10.0, 20.0)


def shown(branch) -> list[str]:
    return [m.content for m in branch.messages]


async def test_messages_follow_each_other_and_a_regenerated_answer_is_an_alternative(tmp_path):
    """Each new message follows the shown branch; a second answer to the same question is a sibling of the
    first, the chat shows one at a time ("answer 2/2"), and which one it shows is stored in the file."""
    path = tmp_path / "baton.db"
    async with await Store.open(path) as store:
        chat = await store.create_chat("branches")
        q = await store.add_message(chat.id, "user", "name a bird")
        first = await answer(store, chat.id, q.id, "a robin")
        assert (q.parent_id, first.parent_id) == (None, q.id)
        second = await answer(store, chat.id, q.id, "a heron")  # regenerate: the same parent
        branch = await store.branch(chat.id)
        assert shown(branch) == ["name a bird", "a heron"]
        assert branch.alternatives[second.id] == (first.id, second.id)
        assert branch.position(second.id) == (2, 2) and branch.positions() == {second.id: (2, 2)}
        assert len(await store.list_messages(chat.id)) == 3  # nothing was deleted

        back = await store.show_alternative(second.id, -1)
        assert shown(back) == ["name a bird", "a robin"] and back.position(first.id) == (1, 2)
        assert shown(await store.show_alternative(first.id, -1)) == ["name a bird", "a robin"]  # stops at the first
    async with await Store.open(path) as store:  # the choice is stored
        assert shown(await store.branch(chat.id)) == ["name a bird", "a robin"]
        follow = await store.add_message(chat.id, "user", "where does it live?")  # follows the shown answer
        assert follow.parent_id == first.id
        assert [m.id for m in await store.thread(follow.id)] == [q.id, first.id, follow.id]
        assert shown(await store.show_alternative(first.id, +1)) == ["name a bird", "a heron"]
        assert shown(await store.show_alternative(second.id, +5)) == ["name a bird", "a heron"]  # stops at the last
        # back to the first answer: the branch goes on to the newest message below it
        assert shown(await store.show_alternative(second.id, -1)) == ["name a bird", "a robin", "where does it live?"]


async def test_showing_a_branch_does_not_reorder_the_chat_list(store):
    old = await store.create_chat("old")
    q = await store.add_message(old.id, "user", "q")
    a1 = await answer(store, old.id, q.id, "one")
    await answer(store, old.id, q.id, "two")
    new = await store.create_chat("new")
    before = (await store.get_chat(old.id)).updated_at
    await store.show_message(a1.id)
    assert (await store.get_chat(old.id)).updated_at == before
    assert [c.id for c in await store.list_chats()] == [new.id, old.id]


async def test_a_parent_must_be_a_message_of_the_same_chat(store):
    a, b = await store.create_chat("a"), await store.create_chat("b")
    qa = await store.add_message(a.id, "user", "mine")
    with pytest.raises(ValueError, match=f"parent_id: message {qa.id} belongs to chat {a.id}"):
        await store.add_message(b.id, "user", "not yours", parent_id=qa.id)
    with pytest.raises(ValueError, match="parent_id"):
        await store.start_assistant_message(b.id, qa.id, "m")
    assert await store.list_messages(b.id) == []
    first = await store.add_message(a.id, "user", "a second first message", parent_id=None)
    assert first.parent_id is None and shown(await store.branch(a.id)) == ["a second first message"]


async def test_deleting_a_message_takes_what_followed_it_in_every_branch_and_nothing_else(store):
    """Edit-and-resend deletes the edited message with everything below it; its siblings and the messages
    above stay, and the chat shows the newest remaining branch."""
    chat = await store.create_chat("edit")
    q1 = await store.add_message(chat.id, "user", "one")
    a1 = await answer(store, chat.id, q1.id, "uno")
    q2 = await store.add_message(chat.id, "user", "two")
    await answer(store, chat.id, q2.id, "dos")
    await answer(store, chat.id, q2.id, "deux")
    other = await store.create_chat("other")
    o = await store.add_message(other.id, "user", "untouched")

    assert await store.delete_message(q2.id) == 3
    assert [m.content for m in await store.list_messages(chat.id)] == ["one", "uno"]
    assert shown(await store.branch(chat.id)) == ["one", "uno"]  # its shown answer was deleted: the newest
    resent = await store.add_message(chat.id, "user", "two, edited", parent_id=q2.parent_id)
    assert resent.parent_id == a1.id and shown(await store.branch(chat.id)) == ["one", "uno", "two, edited"]
    assert await store.delete_message(424242) == 0
    assert await store.get_message(o.id) is not None
    assert await store.delete_chat(chat.id)  # the chat's shown message goes with it
    assert not await store._fetchall("PRAGMA foreign_key_check")


async def test_search_finds_an_alternative_that_is_not_shown_and_can_show_it(store):
    chat = await store.create_chat("search")
    q = await store.add_message(chat.id, "user", "a colour")
    hidden = await answer(store, chat.id, q.id, "vermilion")
    await answer(store, chat.id, q.id, "teal")
    (hit,) = await store.search("vermilion")
    assert hit.message.id == hidden.id and shown(await store.branch(chat.id)) == ["a colour", "teal"]
    assert shown(await store.show_message(hit.message.id)) == ["a colour", "vermilion"]


async def test_export_is_the_shown_branch(store):
    chat = await store.create_chat("Export a branch")
    q = await store.add_message(chat.id, "user", "pick a number")
    await answer(store, chat.id, q.id, "seven")
    await answer(store, chat.id, q.id, "forty-two")
    md = await store.export_chat_markdown(chat.id)
    assert "forty-two" in md and "seven" not in md
    assert "### Assistant (random:tiny) · answer 2 of 2\n\nforty-two" in md
    data = await store.export_chat_json(chat.id)
    assert [(m["content"], m["alternatives"]) for m in data["messages"]] == [("pick a number", 1), ("forty-two", 2)]


async def test_a_version_5_database_becomes_branches_that_show_exactly_what_it_showed(tmp_path):
    """Schema step 6: before it only an answer pointed at its question (user messages had no parent, agent
    transcripts replayed after a crash had none at all) and every chat was one line of messages in id order.
    Each message now follows the one before it in its chat; every row, text, stat and search hit survives, and
    each chat shows (and would send) the same messages in the same order. A regenerate then branches."""
    path = tmp_path / "old.db"
    conn = await sdb.connect(str(path), 1.0)
    stamp = "2026-01-01T00:00:00+00:00"
    try:
        assert await migrations.migrate(conn, migrations.STEPS[:5]) == 5
        for cid, title in ((1, "tui chat"), (2, "agent: replayed")):
            await conn.execute("INSERT INTO chat (id, title, created_at, updated_at) VALUES (?, ?, ?, ?)",
                               (cid, title, stamp, stamp))
        rows = [(1, 1, None, "user", "tell me about otters", None), (2, 2, None, "system", "be brief", None),
                (3, 1, 1, "assistant", "Otters hold hands", "stop"), (4, 2, None, "user", "step one", None),
                (5, 1, None, "user", "and more?", None), (6, 2, None, "assistant", "done one", "stop"),
                (7, 1, 5, "assistant", "They sleep afloat", "length")]
        for row in rows:
            await conn.execute("INSERT INTO message (id, chat_id, parent_id, role, content, finish_reason, "
                               "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*row, stamp, stamp))
        await conn.commit()
    finally:
        await conn.close()
    async with await Store.open(path) as store:
        assert await store.schema_version() == migrations.LATEST >= 6
        tui, agent = await store.list_messages(1), await store.list_messages(2)
        assert [(m.id, m.parent_id, m.content, m.finish_reason) for m in tui] == [
            (1, None, "tell me about otters", None), (3, 1, "Otters hold hands", "stop"),
            (5, 3, "and more?", None), (7, 5, "They sleep afloat", "length")]
        assert [(m.id, m.parent_id) for m in agent] == [(2, None), (4, 2), (6, 4)]
        assert list((await store.branch(1)).messages) == tui and list((await store.branch(2)).messages) == agent
        assert (await store.branch(1)).positions() == {}
        assert [h.message.id for h in await store.search("otters")] == [3, 1]
        assert (await store.get_chat(1)).updated_at.isoformat() == stamp  # showing is not a change
        assert not await store._fetchall("PRAGMA foreign_key_check")
        regenerated = await answer(store, 1, 5, "They hold paws while asleep")
        assert [m.content for m in (await store.branch(1)).messages][-1] == "They hold paws while asleep"
        assert (await store.branch(1)).position(regenerated.id) == (2, 2)
        assert (await store.add_message(2, "user", "step two")).parent_id == 6  # a transcript goes on


async def test_search_finds_user_and_streamed_assistant_text(store):
    chat = await store.create_chat("birds")
    user = await store.add_message(chat.id, "user", "What do flamingos eat?")
    answer = await store.start_assistant_message(chat.id, user.id, "m")
    await store.update_message_text(answer.id, "Flamingos eat shrimp")
    await store.finish_message(answer.id, "Flamingos eat brine shrimp and algae.", "stop")

    hits = await store.search("flamingos")
    assert [h.message.id for h in hits] == [answer.id, user.id]  # newest first
    hit_chat, hit_message, snippet = hits[0]
    assert hit_chat.id == chat.id and hit_message.role == "assistant" and "«Flamingos»" in snippet
    assert [h.message.id for h in await store.search("algae")] == [answer.id]   # text from finish
    assert [h.message.id for h in await store.search("flam shri")] == [answer.id]  # prefixes, AND
    assert await store.search("Shrimp") and await store.search("FLAMINGOS")
    assert await store.search("penguins") == []
    # the superseded streaming text is no longer indexed
    await store.update_message_text(answer.id, "Replaced entirely")
    assert await store.search("algae") == []
    assert [h.message.id for h in await store.search("replaced")] == [answer.id]


@pytest.mark.parametrize("query", ['foo"bar', "AND", "OR NOT", "NEAR(a b)", '"', "*", "a:b", "(", "-x",
                                   "^start", "col:x", "'; DROP TABLE message; --", "", "   ", "…",
                                   "x\x00y", "a\ud800"])
async def test_search_is_safe_for_any_input(store, query):
    chat = await store.create_chat("odd")
    await store.add_message(chat.id, "user", 'foo"bar AND or not near a b start x col')
    hits = await store.search(query)  # must not raise
    assert isinstance(hits, list)
    assert await store.search("foo") != []  # and the table is still there


async def test_search_literal_operator_words_and_quotes(store):
    chat = await store.create_chat("ops")
    m = await store.add_message(chat.id, "user", 'say foo"bar AND stop')
    assert [h.message.id for h in await store.search('foo"bar')] == [m.id]
    assert [h.message.id for h in await store.search("AND")] == [m.id]


def _fts_table() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    for statement in migrations.STEPS[0].statements:
        conn.execute(statement)
    conn.execute("INSERT INTO chat (title, created_at, updated_at) VALUES ('t', '', '')")
    return conn


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=40) | st.sampled_from(['0\x00', 'a\ud800b', '"\x00"']),
       st.text(alphabet=st.characters(categories=["L", "Nd"]), min_size=1, max_size=12))
def test_fts_query_never_raises_and_finds_literal_words(noise, word):
    conn = _fts_table()
    conn.execute("INSERT INTO message (chat_id, role, content, created_at, updated_at) "
                 "VALUES (1, 'user', ?, '', '')", (f"before {word} after",))
    query = fts_query(noise)
    if query is not None:
        conn.execute("SELECT count(*) FROM message_fts WHERE message_fts MATCH ?", (query,)).fetchall()
    found = conn.execute("SELECT count(*) FROM message_fts WHERE message_fts MATCH ?", (fts_query(word),))
    assert found.fetchone()[0] == 1


async def test_search_forgets_deleted_messages_and_can_skip_archived(store):
    chat = await store.create_chat("gone")
    await store.add_message(chat.id, "user", "ephemeral zebra")
    kept = await store.create_chat("kept")
    k = await store.add_message(kept.id, "user", "permanent zebra")
    await store.delete_chat(chat.id)
    assert [h.message.id for h in await store.search("zebra")] == [k.id]
    await store.delete_messages_after(kept.id, k.id, inclusive=True)
    assert await store.search("zebra") == []

    archived = await store.create_chat("old")
    await store.add_message(archived.id, "user", "archived giraffe")
    await store.archive_chat(archived.id)
    assert len(await store.search("giraffe")) == 1
    assert await store.search("giraffe", include_archived=False) == []


# ---- jobs ------------------------------------------------------------------------------------

async def test_jobs_resume_after_restart_without_rerunning_items(tmp_path):
    path = tmp_path / "baton.db"
    items = [{"custom_id": f"req-{i}", "body": {"messages": [{"role": "user", "content": f"q{i}"}]}}
             for i in range(5)]
    async with await Store.open(path) as s:
        job = await s.create_job("batch", "nightly", items, spec={"model": "m"}, source_path="/in.jsonl")
        assert (job.kind, job.status, job.total, job.done, job.spec, job.source_path) == (
            "batch", "queued", 5, 0, {"model": "m"}, "/in.jsonl")
        pending = await s.pending_items(job.id)
        assert [(p.idx, p.custom_id, p.request) for p in pending] == [(i, f"req-{i}", items[i]) for i in range(5)]
        assert (await s.claim_job(job.id)).status == "running"
        assert await s.complete_item(pending[0].id, {"text": "a0"}) is True
        assert await s.complete_item(pending[0].id, {"text": "again"}) is False  # no duplicate, no overwrite
        assert await s.fail_item(pending[1].id, "boom") is True
        assert await s.complete_item(pending[1].id, {"x": 1}) is False
        assert await s.complete_item(pending[3].id, ["a3"]) is True
        assert await s.job_progress(job.id) == (2, 1, 5)
        first_ids = [p.id for p in pending]
    with sqlite3.connect(path) as raw:  # the runner that claimed the job is gone (as after a kill)
        raw.execute("UPDATE job SET owner_pid = ? WHERE id = ?", (exited_pid(), job.id))
    # "restart": the job was left running, so it comes back queued, with only unfinished items pending
    async with await Store.open(path) as s:
        job2 = await s.get_job(job.id)
        assert job2.status == "queued" and (job2.done, job2.failed, job2.pending) == (2, 1, 2)
        assert [p.idx for p in await s.pending_items(job.id)] == [2, 4]
        assert [p.idx for p in await s.pending_items(job.id, limit=1)] == [2]
        assert await s.job_progress(job.id) == (2, 1, 5)
        everything = await s.list_items(job.id)
        assert [i.id for i in everything] == first_ids
        assert (everything[0].status, everything[0].result) == ("done", {"text": "a0"})
        assert (everything[1].status, everything[1].error, everything[1].result) == ("failed", "boom", None)
        assert everything[0].completed_at is not None and everything[2].completed_at is None
        assert await s.retry_failed_items(job.id) == 1
        assert [p.idx for p in await s.pending_items(job.id)] == [1, 2, 4]
        with sqlite3.connect(path) as raw:  # the (job_id, idx) uniqueness is enforced by the schema
            with pytest.raises(sqlite3.IntegrityError):
                raw.execute("INSERT INTO job_item (job_id, idx, request) VALUES (?, 0, '{}')", (job.id,))


async def test_job_listing_statuses_and_errors(store):
    a = await store.create_job("batch", "a", [{"x": 1}])
    b = await store.create_job("agent", "b", [], spec={"goal": "g"})
    assert [j.id for j in await store.list_jobs()] == [b.id, a.id]
    assert (await store.set_job_status(a.id, "paused")).status == "paused"
    with pytest.raises(ValueError, match="status"):
        await store.set_job_status(a.id, "exploded")
    with pytest.raises(ValueError, match="kind"):
        await store.create_job("cron", "c", [])
    with pytest.raises(TypeError, match=r"items\[0\]"):
        await store.create_job("batch", "c", ["not a dict"])
    with pytest.raises(NotFoundError):
        await store.set_job_status(999, "done")
    with pytest.raises(NotFoundError):
        await store.complete_item(999, {})
    assert await store.get_job(999) is None
    assert await store.delete_job(a.id) is True
    assert await store.pending_items(a.id) == []
    assert [j.id for j in await store.list_jobs()] == [b.id]


async def test_a_queued_job_is_claimed_by_exactly_one_connection(tmp_path):
    """`claim_job` is a compare-and-swap: of two connections (two runners) claiming one queued job at once,
    one gets it running, owned by this process; the other, and any later claim, gets None."""
    path = tmp_path / "baton.db"
    async with await Store.open(path) as a, await Store.open(path) as b:
        job = await a.create_job("batch", "contested", [{"x": 1}])
        claims = await asyncio.gather(a.claim_job(job.id), b.claim_job(job.id))
        assert sorted(c is None for c in claims) == [False, True]
        assert next(c for c in claims if c is not None).status == "running"
        assert (await b._fetchone("SELECT owner_pid FROM job WHERE id = ?", (job.id,)))[0] == os.getpid()
        assert await a.claim_job(job.id) is None and await b.claim_job(job.id) is None  # running: not claimable
        await a.set_job_status(job.id, "paused")
        assert await b.claim_job(job.id) is None  # paused: not claimable either
        with pytest.raises(ValueError, match="claim_job"):
            await a.set_job_status(job.id, "running")
        with pytest.raises(NotFoundError):
            await a.claim_job(999)


# ---- export ----------------------------------------------------------------------------------

async def test_export_markdown_and_json(store):
    chat = await store.create_chat("Export me", system_prompt="You are terse.", params={"temperature": 0.7})
    u = await store.add_message(chat.id, "user", "Hi there")
    a = await store.start_assistant_message(chat.id, u.id, "smollm2")
    await store.finish_message(a.id, "Hello!", "length", prompt_tokens=5, completion_tokens=2, ttft_ms=12,
                               tokens_per_s=30.0)
    md = await store.export_chat_markdown(chat.id)
    assert md.startswith("# Export me\n")
    assert "> You are terse." in md and "### User\n\nHi there" in md
    assert "### Assistant (smollm2)\n\nHello!" in md
    assert "5 prompt + 2 completion tokens" in md and "finish: length" in md

    data = await store.export_chat_json(chat.id)
    assert json.loads(json.dumps(data)) == data  # JSON-ready
    assert (data["title"], data["system_prompt"], data["params"]) == ("Export me", "You are terse.",
                                                                      {"temperature": 0.7})
    assert [(m["role"], m["content"], m["finish_reason"]) for m in data["messages"]] == [
        ("user", "Hi there", None), ("assistant", "Hello!", "length")]
    with pytest.raises(NotFoundError):
        await store.export_chat_json(424242)


async def test_a_version_1_database_gains_the_job_owner_column(tmp_path):
    path = tmp_path / "old.db"
    conn = await sdb.connect(str(path), 1.0)
    try:
        assert await migrations.migrate(conn, migrations.STEPS[:1]) == 1
        await conn.execute("INSERT INTO job (kind, name, status, spec, created_at, updated_at) "
                           "VALUES ('batch', 'old job', 'queued', '{}', '2026-01-01', '2026-01-01')")
        await conn.commit()
    finally:
        await conn.close()
    async with await Store.open(path) as store:
        assert await store.schema_version() == migrations.LATEST >= 2
        assert [j.name for j in await store.list_jobs()] == ["old job"]
        await store.claim_job(1)
        assert (await store._fetchone("SELECT owner_pid FROM job WHERE id = 1"))[0] == os.getpid()


async def test_a_version_2_database_keeps_its_rows_and_stops_reusing_ids(tmp_path):
    """Schema step 3 rebuilds chat, message and job with AUTOINCREMENT (foreign keys off during the step,
    checked before it commits): every row, parent link, search hit and job item survives, and the id of a
    deleted newest row is never given to a new one."""
    path = tmp_path / "old.db"
    conn = await sdb.connect(str(path), 1.0)
    try:
        assert await migrations.migrate(conn, migrations.STEPS[:2]) == 2
        stamp = "2026-01-01T00:00:00+00:00"
        await conn.execute("INSERT INTO chat (id, title, created_at, updated_at) VALUES (1, 'kept', ?, ?)",
                           (stamp, stamp))
        await conn.execute("INSERT INTO chat (id, title, created_at, updated_at) VALUES (2, 'newest', ?, ?)",
                           (stamp, stamp))
        await conn.execute("INSERT INTO message (id, chat_id, role, content, created_at, updated_at) "
                           "VALUES (1, 1, 'user', 'where do penguins live', ?, ?)", (stamp, stamp))
        await conn.execute("INSERT INTO message (id, chat_id, parent_id, role, content, finish_reason, created_at, "
                           "updated_at) VALUES (2, 1, 1, 'assistant', 'in Antarctica', 'stop', ?, ?)", (stamp, stamp))
        await conn.execute("INSERT INTO job (id, kind, name, status, created_at, updated_at) "
                           "VALUES (1, 'batch', 'old job', 'done', ?, ?)", (stamp, stamp))
        await conn.execute("INSERT INTO job_item (job_id, idx, request) VALUES (1, 0, '{}')")
        await conn.commit()
    finally:
        await conn.close()
    async with await Store.open(path) as store:
        assert await store.schema_version() == migrations.LATEST >= 3
        assert [(m.id, m.parent_id, m.content) for m in await store.list_messages(1)] == [
            (1, None, "where do penguins live"), (2, 1, "in Antarctica")]
        assert [h.message.id for h in await store.search("antarctica")] == [2]
        assert (await store.get_job(1)).name == "old job"
        assert (await store._fetchone("SELECT count(*) FROM job_item WHERE job_id = 1"))[0] == 1
        # the newest chat, message and job are deleted: their ids are not handed out again
        assert await store.delete_messages_after(1, 2, inclusive=True) == 1
        assert (await store.add_message(1, "assistant", "on the ice")).id == 3
        assert await store.delete_chat(2)
        assert (await store.create_chat("new")).id == 3
        assert await store.delete_job(1)
        assert (await store.create_job("batch", "new job", [{"body": {}}])).id == 2
        assert [h.message.id for h in await store.search("ice")] == [3]
        assert not await store._fetchall("PRAGMA foreign_key_check")
        assert (await store._fetchone("PRAGMA foreign_keys"))[0] == 1


async def test_a_version_3_database_keeps_every_row_and_its_unfinished_work_is_recovered_as_before(tmp_path):
    """Schema step 4 adds the writer process (pid, start time) of streaming answers and running jobs. Rows
    written before it have none: an unfinished answer is marked interrupted and a job left running by this
    pid is queued again on open (the old rule), and nothing else changes."""
    path = tmp_path / "old.db"
    conn = await sdb.connect(str(path), 1.0)
    try:
        assert await migrations.migrate(conn, migrations.STEPS[:3]) == 3
        stamp = "2026-01-01T00:00:00+00:00"
        await conn.execute("INSERT INTO chat (id, title, created_at, updated_at) VALUES (1, 'kept', ?, ?)",
                           (stamp, stamp))
        for mid, parent, role, content, reason in [(1, None, "user", "tell me about otters", None),
                                                   (2, 1, "assistant", "Otters hold hands", "stop"),
                                                   (3, 2, "user", "and more?", None),
                                                   (4, 3, "assistant", "They sleep flo", None)]:
            await conn.execute("INSERT INTO message (id, chat_id, parent_id, role, content, finish_reason, "
                               "created_at, updated_at) VALUES (?, 1, ?, ?, ?, ?, ?, ?)",
                               (mid, parent, role, content, reason, stamp, stamp))
        await conn.execute("INSERT INTO job (id, kind, name, status, total_items, created_at, updated_at, owner_pid) "
                           "VALUES (1, 'batch', 'old run', 'running', 2, ?, ?, ?)", (stamp, stamp, os.getpid()))
        await conn.execute("INSERT INTO job (id, kind, name, status, created_at, updated_at) "
                           "VALUES (2, 'batch', 'old done', 'done', ?, ?)", (stamp, stamp))
        await conn.execute("INSERT INTO job_item (job_id, idx, request, status) VALUES (1, 0, '{}', 'done')")
        await conn.execute("INSERT INTO job_item (job_id, idx, request) VALUES (1, 1, '{}')")
        await conn.commit()
    finally:
        await conn.close()
    async with await Store.open(path) as store:
        assert await store.schema_version() == migrations.LATEST >= 4
        assert (store.recovered_messages, store.recovered_jobs) == (1, 1)
        messages = await store.list_messages(1)
        assert [(m.id, m.parent_id, m.role, m.content) for m in messages] == [
            (1, None, "user", "tell me about otters"), (2, 1, "assistant", "Otters hold hands"),
            (3, 2, "user", "and more?"), (4, 3, "assistant", "They sleep flo")]
        assert [m.finish_reason for m in messages] == [None, "stop", None, "interrupted"]
        assert [h.message.id for h in await store.search("otters")] == [2, 1]
        assert [h.message.id for h in await store.search("sleep")] == [4]
        assert [(j.id, j.status, j.done, j.total) for j in await store.list_jobs()] == [
            (2, "done", 0, 0), (1, "queued", 1, 2)]
        assert not await store._fetchall("PRAGMA foreign_key_check")
        columns = {r[1] for r in await store._fetchall("PRAGMA table_info(message)")}
        assert {"writer_pid", "writer_started"} <= columns
        assert "owner_started" in {r[1] for r in await store._fetchall("PRAGMA table_info(job)")}


async def test_a_version_6_database_keeps_every_row_and_answers_gain_cached_and_dropped_counts(tmp_path):
    """Schema step 7 adds an answer's cached prompt tokens and the earlier messages left out of its prompt. A
    version-6 file keeps every chat, message, stat, branch and search hit; its answers have neither count
    (None), and answers finished after the upgrade store both, which a reopened store reads back."""
    path = tmp_path / "old.db"
    conn = await sdb.connect(str(path), 1.0)
    stamp = "2026-01-01T00:00:00+00:00"
    try:
        assert await migrations.migrate(conn, migrations.STEPS[:6]) == 6
        await conn.execute("INSERT INTO chat (id, title, system_prompt, params, created_at, updated_at) "
                           "VALUES (1, 'otters', 'be brief', '{\"max_tokens\": 9}', ?, ?)", (stamp, stamp))
        for row in [(1, None, "user", "tell me about otters", None, None, None, None, None, None),
                    (2, 1, "assistant", "Otters hold hands", "random:tiny", 12, 4, 35.5, 41.0, "stop"),
                    (3, 1, "assistant", "They float", "random:tiny", 12, 2, 30.0, None, "length"),
                    (4, 2, "user", "and more?", None, None, None, None, None, None)]:
            await conn.execute("INSERT INTO message (id, chat_id, parent_id, role, content, model, prompt_tokens, "
                               "completion_tokens, ttft_ms, tokens_per_s, finish_reason, created_at, updated_at) "
                               "VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row, stamp, stamp))
        await conn.execute("UPDATE chat SET current_message_id = 4 WHERE id = 1")
        await conn.commit()
    finally:
        await conn.close()
    async with await Store.open(path) as store:
        assert await store.schema_version() == migrations.LATEST >= 7
        chat = await store.get_chat(1)
        assert (chat.title, chat.system_prompt, chat.params) == ("otters", "be brief", {"max_tokens": 9})
        messages = await store.list_messages(1)
        assert [(m.id, m.parent_id, m.role, m.content, m.prompt_tokens, m.completion_tokens, m.ttft_ms,
                 m.tokens_per_s, m.finish_reason) for m in messages] == [
            (1, None, "user", "tell me about otters", None, None, None, None, None),
            (2, 1, "assistant", "Otters hold hands", 12, 4, 35.5, 41.0, "stop"),
            (3, 1, "assistant", "They float", 12, 2, 30.0, None, "length"),
            (4, 2, "user", "and more?", None, None, None, None, None)]
        assert all(m.cached_tokens is None and m.dropped_messages is None for m in messages)
        branch = await store.branch(1)
        assert [m.id for m in branch.messages] == [1, 2, 4] and branch.position(2) == (1, 2)
        assert [h.message.id for h in await store.search("otters")] == [2, 1]
        assert not await store._fetchall("PRAGMA foreign_key_check")
        started = await store.start_assistant_message(1, 4, "random:tiny", "Th")
        finished = await store.finish_message(started.id, "They sleep afloat", "stop", 40, 5, 20.0, 50.0,
                                              cached_tokens=32, dropped_messages=2)
        assert (finished.cached_tokens, finished.dropped_messages) == (32, 2)
    async with await Store.open(path) as store:
        again = await store.get_message(finished.id)
        assert (again.prompt_tokens, again.cached_tokens, again.dropped_messages) == (40, 32, 2)
        md = await store.export_chat_markdown(1)
        assert "32 prompt tokens cached" in md and "2 earlier messages left out of the prompt" in md
        assert (await store.export_chat_json(1))["messages"][-1]["cached_tokens"] == 32
