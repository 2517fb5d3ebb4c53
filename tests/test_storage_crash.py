"""The storage layer when things go wrong: a killed app mid-stream, corrupt, foreign, locked or odd files."""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from storage import StorageError, Store, writers

ROOT = Path(__file__).resolve().parents[1]

# Opens the store, stores a user message, streams part of an answer (a flush per chunk) and works
# through half of a job, prints READY, then waits to be killed.
CRASHING_APP = r"""
import asyncio, sys
from storage import Store

async def main(path):
    s = await Store.open(path)
    chat = await s.create_chat("about to crash")
    user = await s.add_message(chat.id, "user", "Explain quicksort please")
    answer = await s.start_assistant_message(chat.id, user.id, "smollm2")
    text = ""
    for word in ["Quicksort", "partitions", "the", "array", "around", "a", "pivot"]:
        text += word + " "
        await s.update_message_text(answer.id, text)
    job = await s.create_job("batch", "half done", [{"custom_id": str(i)} for i in range(4)])
    await s.claim_job(job.id)
    items = await s.pending_items(job.id)
    await s.complete_item(items[0].id, {"ok": 0})
    await s.fail_item(items[1].id, "bad request")
    print("READY", chat.id, user.id, answer.id, job.id, flush=True)
    await asyncio.sleep(60)

asyncio.run(main(sys.argv[1]))
"""


def run_until_ready(path: Path) -> tuple[subprocess.Popen, list[int]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_APP, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("READY"):
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the helper did not get ready: {line!r} {err}")
    return proc, [int(x) for x in line.split()[1:]]


async def test_killed_mid_stream_keeps_the_partial_answer(tmp_path):
    path = tmp_path / "baton.db"
    proc, (chat_id, user_id, answer_id, job_id) = run_until_ready(path)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    proc.stdout.close()
    proc.stderr.close()

    async with await Store.open(path) as s:
        assert (s.recovered_messages, s.recovered_jobs) == (1, 1)
        messages = await s.list_messages(chat_id)
        assert [m.id for m in messages] == [user_id, answer_id]
        user, answer = messages
        assert (user.role, user.content) == ("user", "Explain quicksort please")
        assert answer.content == "Quicksort partitions the array around a pivot "
        assert answer.finish_reason == "interrupted" and not answer.streaming
        assert [h.message.id for h in await s.search("pivot")] == [answer_id]
        assert [c.id for c in await s.list_chats()] == [chat_id]
        job = await s.get_job(job_id)
        assert job.status == "queued" and (job.done, job.failed, job.total) == (1, 1, 4)
        assert [i.idx for i in await s.pending_items(job_id)] == [2, 3]
        # the recovered message can still be finished (e.g. "continue" in the app)
        assert (await s.finish_message(answer_id, answer.content + "element.", "stop")).finish_reason == "stop"
    async with await Store.open(path) as s:
        assert s.recovered_messages == 0
        assert (await s.get_message(answer_id)).finish_reason == "stop"


# ---- files that are not usable databases -------------------------------------------------------

def siblings(path: Path) -> set[str]:
    return {p.name for p in path.parent.iterdir()}


async def test_random_bytes_are_refused_and_left_untouched(tmp_path):
    path = tmp_path / "baton.db"
    junk = b"\x00not sqlite\xff" + os.urandom(8192)
    path.write_bytes(junk)
    with pytest.raises(StorageError, match="not an SQLite database") as info:
        await Store.open(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == junk
    assert siblings(path) == {"baton.db"}  # no new database, no journal beside it


async def test_sqlite_header_with_garbage_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "baton.db"
    junk = b"SQLite format 3\x00" + b"\xee" * 8192
    path.write_bytes(junk)
    with pytest.raises(StorageError) as info:
        await Store.open(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == junk


async def test_corrupt_pages_surface_as_storage_error(tmp_path):
    path = tmp_path / "baton.db"
    async with await Store.open(path) as s:
        chat = await s.create_chat("big")
        for i in range(40):
            await s.add_message(chat.id, "user", f"message {i} " + "lorem ipsum " * 200)
    data = bytearray(path.read_bytes())
    assert len(data) > 8 * 4096
    data[4096:len(data)] = b"\xa5" * (len(data) - 4096)  # keep page 1 (header + schema), trash the rest
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match=rf"{path.name}.*(corrupt|malformed|not a database)"):
        s = await Store.open(path)
        try:
            await s.list_messages(chat.id)
            await s.search("lorem")
        finally:
            await s.close()


async def test_a_directory_is_refused(tmp_path):
    folder = tmp_path / "baton.db"
    folder.mkdir()
    with pytest.raises(StorageError, match="is a directory") as info:
        await Store.open(folder)
    assert str(folder) in str(info.value)
    assert list(folder.iterdir()) == []


async def test_a_folder_that_is_a_file_or_cannot_be_created_is_refused(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match=f"{blocker} is not a folder"):
        await Store.open(blocker / "baton.db")
    if sys.platform == "linux":  # the default path's folder is created, and cannot be under a file
        monkeypatch.setenv("XDG_DATA_HOME", str(blocker / "data"))
        with pytest.raises(StorageError, match="cannot create its folder"):
            await Store.open()
    assert blocker.read_text() == "x"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions")
async def test_unreadable_and_read_only_files_are_refused(tmp_path):
    path = tmp_path / "baton.db"
    async with await Store.open(path):
        pass
    path.chmod(0o000)
    try:
        with pytest.raises(StorageError, match="cannot read"):
            await Store.open(path)
        path.chmod(0o444)
        with pytest.raises(StorageError, match="read-only"):
            await Store.open(path)
    finally:
        path.chmod(0o644)


# ---- locks held by another process ---------------------------------------------------------------

async def test_open_fails_fast_when_another_process_holds_the_write_lock(tmp_path):
    path = tmp_path / "baton.db"
    async with await Store.open(path):
        pass
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        start = time.monotonic()
        with pytest.raises(StorageError, match="locked") as info:
            await Store.open(path, busy_timeout=0.2)
        assert time.monotonic() - start < 3
        assert str(path) in str(info.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
    async with await Store.open(path, busy_timeout=0.2) as s:  # usable once released
        await s.create_chat("fine")


async def test_open_fails_on_a_new_file_locked_exclusively(tmp_path):
    path = tmp_path / "baton.db"
    other = sqlite3.connect(path, isolation_level=None)  # rollback journal: the lock blocks readers too
    other.execute("CREATE TABLE IF NOT EXISTS t (x)")
    other.execute("DROP TABLE t")
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StorageError, match="locked"):
            await Store.open(path, busy_timeout=0.2)
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_a_write_blocked_by_another_process_raises_storage_error(tmp_path):
    path = tmp_path / "baton.db"
    async with await Store.open(path, busy_timeout=0.2) as s:
        chat = await s.create_chat("contended")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StorageError, match="locked"):
                await s.add_message(chat.id, "user", "waiting")
            assert [c.title for c in await s.list_chats()] == ["contended"]  # reads still work (WAL)
        finally:
            other.execute("ROLLBACK")
            other.close()
        await s.add_message(chat.id, "user", "after")  # the failed transaction left nothing behind
        assert [m.content for m in await s.list_messages(chat.id)] == ["after"]


async def test_reopening_leaves_a_job_of_a_live_runner_alone(tmp_path):
    """Only jobs whose runner process is gone go back to 'queued' when another process opens the store."""
    import subprocess
    import sys

    from storage import Store

    path = tmp_path / "jobs.db"
    store = await Store.open(path)
    live = await store.create_job("batch", "live", [{"custom_id": "a"}])
    dead = await store.create_job("batch", "dead", [{"custom_id": "b"}])
    await store.claim_job(live.id)
    await store.claim_job(dead.id)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        await store._run("UPDATE job SET owner_pid = ?, owner_started = ? WHERE id = ?",  # a live runner
                         (sleeper.pid, psutil.Process(sleeper.pid).create_time(), live.id))
        await store._run("UPDATE job SET owner_pid = ? WHERE id = ?", (gone.pid, dead.id))  # a killed one
        await store._conn.commit()
        await store.close()
        again = await Store.open(path)
        assert (await again.get_job(live.id)).status == "running"
        assert (await again.get_job(dead.id)).status == "queued"
        assert again.recovered_jobs == 1
        await again.close()
    finally:
        sleeper.kill()


# ---- recovery touches only the work of processes that are gone -----------------------------------------

# Opens the store, starts an answer and exits without finishing it (what a crash leaves); prints its id.
ABANDONING_APP = r"""
import asyncio, sys
from storage import Store

async def main(path):
    async with await Store.open(path) as s:
        chat = await s.create_chat("abandoned")
        answer = await s.start_assistant_message(chat.id, None, "smollm2", "half an ans")
        print(answer.id, flush=True)

asyncio.run(main(sys.argv[1]))
"""


def run_python(code: str, *args: str) -> str:
    """Run `code` in a fresh interpreter (with this checkout first on the path) to its end; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_another_open_leaves_a_live_writers_answer_streaming(tmp_path):
    """The TUI streams an answer (connection A); a second `Store.open` in this process (connection B) and
    `baton jobs list` in another process must not mark it interrupted: its writer still runs."""
    path = tmp_path / "baton.db"
    async with await Store.open(path) as a:
        chat = await a.create_chat("live")
        user = await a.add_message(chat.id, "user", "Explain quicksort")
        answer = await a.start_assistant_message(chat.id, user.id, "smollm2", "Quicksort")
        async with await Store.open(path) as b:
            assert b.recovered_messages == 0
            assert (await b.get_message(answer.id)).streaming
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        listed = subprocess.run([sys.executable, "-m", "app.cli", "jobs", "list", "--db", str(path)],
                                capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
        assert listed.returncode == 0, listed.stderr
        assert (await a.get_message(answer.id)).streaming
        await a.update_message_text(answer.id, "Quicksort partitions")
        done = await a.finish_message(answer.id, "Quicksort partitions.", "stop", completion_tokens=3)
        assert (done.finish_reason, done.content) == ("stop", "Quicksort partitions.")


async def test_open_marks_interrupted_only_answers_whose_writer_is_gone(tmp_path):
    path = tmp_path / "baton.db"
    async with await Store.open(path) as a:
        chat = await a.create_chat("mine")
        mine = await a.start_assistant_message(chat.id, None, "smollm2", "still coming")
        abandoned = int(run_python(ABANDONING_APP, str(path)))  # its writer has exited
        reused = await a.start_assistant_message(chat.id, None, "smollm2", "a pid given again")
        # what a process that died, whose pid this process then got, would have left:
        await a._run("UPDATE message SET writer_started = writer_started - 3600 WHERE id = ?", (reused.id,))
        async with await Store.open(path) as b:
            assert b.recovered_messages == 2
            assert (await b.get_message(abandoned)).finish_reason == "interrupted"
            assert (await b.get_message(abandoned)).content == "half an ans"
            assert (await b.get_message(reused.id)).finish_reason == "interrupted"
            assert (await b.get_message(mine.id)).streaming


async def test_another_open_in_the_same_process_leaves_its_running_job_alone(tmp_path):
    """A job claimed by a runner of this process stays `running` when this process opens the store again (it
    was put back to `queued`, where a second runner could claim it and run it twice)."""
    path = tmp_path / "baton.db"
    async with await Store.open(path) as a:
        job = await a.create_job("batch", "busy", [{"custom_id": "a"}])
        await a.claim_job(job.id)
        async with await Store.open(path) as b:
            assert b.recovered_jobs == 0
            assert (await b.get_job(job.id)).status == "running"
            assert await b.claim_job(job.id) is None


def test_a_writer_is_alive_only_while_that_very_process_runs():
    pid, started = writers.this_process()
    assert writers.is_alive(pid, started)
    assert not writers.is_alive(pid, started - 3600)  # the pid of a dead writer, given again to this process
    assert not writers.is_alive(None, None)  # an answer written before writers were recorded
    assert not writers.is_alive(pid, None)  # a job of schema 2 or 3 naming this pid: the old rule
    assert not any(writers.is_alive(p, s) for p in (-5, 0, 2**40) for s in (started, None))  # damaged rows
