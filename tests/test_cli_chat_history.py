"""`baton chat` and the chat history (issue #10.9): every conversation is stored as a chat of the TUI's database,
found and continued there or with `-c` / `--chat ID`; `--no-log` stores nothing; the stats line goes to stderr.

In-process `main([...])` on `random:tiny` with real SQLite files (and one run of the console entry point in a
subprocess). The default database is a throwaway one per test (`conftest._private_history`).
"""

from __future__ import annotations

import asyncio
import io
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from app.chat.answer import stats_line
from app.cli import chat_cmd, chat_history, main
from app.tui.sessions import Sessions
from storage import Store, default_db_path

TINY = ["--model", "random:tiny"]
SHORT = [*TINY, "--max-tokens", "5", "--temperature", "0"]
REPO = Path(__file__).resolve().parents[1]
#: the stats line of a stored answer: `baton: chat 3 · 5 tokens · TTFT 12 ms · 80.1 tok/s · length cap`
STORED = re.compile(r"^baton: chat (\d+) · (\d+ tokens · TTFT \d+ ms( · \d+ cached)?( · [\d.]+ tok/s)?( · [a-z ]+)?)$")


def run(coro):
    return asyncio.run(coro)


async def read(db: Path):
    """Every chat of the file, newest first, with its shown branch: [(chat, [messages])]."""
    async with await Store.open(db) as store:
        return [(chat, list((await store.branch(chat.id)).messages)) for chat in await store.list_chats()]


def spy_prompts(monkeypatch) -> list[list[dict]]:
    """Record the chat messages `baton chat` sends to the engine."""
    prompts, real = [], chat_cmd.stream_answer

    async def spy(engine, messages, params, out, take=None):
        prompts.append([dict(m) for m in messages])
        return await real(engine, messages, params, out, take)

    monkeypatch.setattr(chat_cmd, "stream_answer", spy)
    return prompts


def error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("baton: error: ") and "Traceback" not in err, err
    return lines[0]


def no_model(monkeypatch) -> None:
    """Fail the test if the model is loaded (errors about the database come first)."""
    monkeypatch.setattr(chat_cmd, "start_engine", lambda config: pytest.fail("the model was loaded"))


# ------------------------------------------------------------------------------------------ stored
def test_an_answer_is_stored_as_a_chat_and_its_stats_line_goes_to_stderr(tmp_path, capsys):
    db = tmp_path / "history.db"
    assert main(["chat", "Name three  birds\nplease", *SHORT, "--db", str(db)]) == 0
    captured = capsys.readouterr()
    ((chat, (user, answer)),) = run(read(db))
    assert chat.title == "Name three birds please"  # the TUI's title for a chat with this first message
    assert chat.params["max_tokens"] == 5 and chat.params["temperature"] == 0 and chat.system_prompt is None
    assert (user.role, user.content) == ("user", "Name three  birds\nplease")
    assert answer.role == "assistant" and answer.parent_id == user.id and answer.model == "random:tiny"
    assert captured.out == answer.content + "\n"  # stdout is the answer text only
    assert answer.finish_reason in ("stop", "length") and 1 < answer.completion_tokens <= 5
    assert answer.ttft_ms > 0 and answer.tokens_per_s > 0 and answer.prompt_tokens > 0
    (line,) = captured.err.splitlines()
    match = STORED.match(line)
    assert match and int(match.group(1)) == chat.id
    assert match.group(2) == stats_line(answer.completion_tokens, answer.ttft_ms, answer.tokens_per_s,
                                        answer.finish_reason)  # the TUI's line under this answer


def test_the_default_database_is_the_tuis(capsys):
    assert main(["chat", "where am I stored?", *SHORT]) == 0
    ((chat, messages),) = run(read(default_db_path()))
    assert chat.title == "where am I stored?" and len(messages) == 2


def test_a_conversation_over_stdin_is_one_chat_and_continue_carries_it_on(tmp_path, capsys, monkeypatch):
    db = str(tmp_path / "history.db")
    monkeypatch.setattr(sys, "stdin", io.StringIO("first question\n\nsecond question\n"))
    assert main(["chat", *SHORT, "--system", "be brief", "--db", db]) == 0
    stats = capsys.readouterr().err.splitlines()
    ((chat, messages),) = run(read(Path(db)))
    assert [STORED.match(x).group(1) for x in stats] == [str(chat.id)] * 2  # a stats line per answer
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
    assert chat.system_prompt == "be brief" and chat.title == "first question"

    prompts = spy_prompts(monkeypatch)
    monkeypatch.setattr(sys, "stdin", io.StringIO("third question\n"))
    assert main(["chat", "-c", *TINY, "--db", db]) == 0  # the chat's own settings: no options needed
    err = capsys.readouterr().err
    assert [STORED.match(x).group(1) for x in err.splitlines()] == [str(chat.id)]
    assert prompts == [[{"role": "system", "content": "be brief"}]
                       + [{"role": m.role, "content": m.content} for m in messages]
                       + [{"role": "user", "content": "third question"}]]
    ((same, now),) = run(read(Path(db)))
    assert same.id == chat.id and [m.id for m in now[:4]] == [m.id for m in messages] and len(now) == 6
    assert now[4].parent_id == messages[-1].id and now[5].completion_tokens <= 5  # max_tokens: the chat's


def test_chat_id_continues_that_chat_and_options_override_its_settings_for_this_run(tmp_path, capsys, monkeypatch):
    db = str(tmp_path / "history.db")
    assert main(["chat", "about otters", *SHORT, "--db", db]) == 0
    assert main(["chat", "about owls", *SHORT, "--db", db]) == 0  # the most recent one
    otters = next(chat for chat, _ in run(read(Path(db))) if chat.title == "about otters")
    capsys.readouterr()
    prompts = spy_prompts(monkeypatch)
    assert main(["chat", "more", *TINY, "--chat", str(otters.id), "--max-tokens", "3", "--db", db]) == 0
    assert [m["content"] for m in prompts[0]][0] == "about otters" and len(prompts[0]) == 3
    chats = dict((chat.id, messages) for chat, messages in run(read(Path(db))))
    assert [m.content for m in chats[otters.id]][2] == "more" and chats[otters.id][3].completion_tokens <= 3
    assert next(c for c, _ in run(read(Path(db))) if c.id == otters.id).params["max_tokens"] == 5  # kept


def test_continue_follows_the_branch_the_tui_shows(tmp_path, capsys, monkeypatch, make_engine):
    """A conversation made by `baton chat`, opened and regenerated with the TUI's store API (`Sessions`), then
    paged back to its first answer: `baton chat -c` sends (and adds to) the branch the TUI shows."""
    db = tmp_path / "history.db"
    assert main(["chat", "pick a colour", *SHORT, "--db", str(db)]) == 0
    ((chat, (question, first)),) = run(read(db))

    async def regenerate_in_the_tui() -> int:
        async with await Store.open(db) as store:
            tasks = []
            sessions = Sessions(store, post=lambda message: None,
                                launch=lambda coro, name: tasks.append(asyncio.create_task(coro)))
            sessions.attach_engine(make_engine())
            sessions.regenerate(await store.get_chat(chat.id))
            while tasks:
                await tasks.pop(0)
            second = (await store.branch(chat.id)).messages[-1]
            assert second.id != first.id and second.parent_id == question.id
            await store.show_alternative(second.id, -1)  # `[` on the answer: back to the first
            return second.id

    second_id = run(regenerate_in_the_tui())
    prompts = spy_prompts(monkeypatch)
    assert main(["chat", "-c", "why that one?", *TINY, "--db", str(db)]) == 0
    assert prompts == [[{"role": "user", "content": "pick a colour"}, {"role": "assistant", "content": first.content},
                        {"role": "user", "content": "why that one?"}]]
    ((_, shown),) = run(read(db))
    assert [m.id for m in shown[:2]] == [question.id, first.id] and shown[2].parent_id == first.id

    async def alternatives() -> tuple[int, ...]:
        async with await Store.open(db) as store:
            return (await store.branch(chat.id)).alternatives[first.id]

    assert run(alternatives()) == (first.id, second_id)  # the regenerated answer is still there


def test_no_log_stores_nothing(tmp_path, capsys, monkeypatch):
    db = tmp_path / "history.db"
    assert main(["chat", "keep this quiet", *SHORT, "--no-log", "--db", str(db)]) == 0
    assert not db.exists() and not default_db_path().parent.exists()  # not even opened
    (line,) = capsys.readouterr().err.splitlines()
    assert re.match(r"^baton: \d+ tokens · TTFT \d+ ms", line)  # no chat id: nothing to continue

    assert main(["chat", "stored", *SHORT, "--db", str(db)]) == 0
    before = run(read(db))
    prompts = spy_prompts(monkeypatch)
    monkeypatch.setattr(sys, "stdin", io.StringIO("one\ntwo\n"))
    assert main(["chat", "-c", "-n", *SHORT, "--db", str(db)]) == 0  # reads the chat, stores nothing
    assert [m["content"] for m in prompts[1]][:3] == ["stored", before[0][1][1].content, "one"]
    assert len(prompts[1]) == 5  # this run's first turn goes along in memory
    assert run(read(db)) == before


# ------------------------------------------------------------------------------------------ errors
def test_an_unknown_chat_or_nothing_to_continue_exits_2_before_loading_the_model(tmp_path, capsys, monkeypatch):
    db = str(tmp_path / "history.db")
    no_model(monkeypatch)
    assert main(["chat", "-c", "hi", *TINY, "--db", db]) == 2
    assert "--continue: there is no chat to continue in" in error_line(capsys.readouterr().err)
    assert main(["chat", "--chat", "42", "hi", *TINY, "--db", db]) == 2
    assert "--chat: there is no chat 42 in " + db in error_line(capsys.readouterr().err)
    assert run(read(Path(db))) == []


def test_continue_and_chat_together_or_a_system_prompt_for_a_stored_chat_exit_2(tmp_path, capsys, monkeypatch):
    db = str(tmp_path / "history.db")
    assert main(["chat", "-c", "--chat", "1", "hi", *TINY, "--db", db]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["chat", "hello", *SHORT, "--db", db]) == 0
    capsys.readouterr()
    no_model(monkeypatch)
    assert main(["chat", "-c", "hi", "--system", "be someone else", *TINY, "--db", db]) == 2
    assert "--system: chat 1 keeps its own system prompt" in error_line(capsys.readouterr().err)


def test_a_db_in_a_missing_folder_a_corrupt_or_a_locked_database_exit_2_untouched(tmp_path, capsys, monkeypatch):
    no_model(monkeypatch)
    missing = tmp_path / "no" / "such" / "baton.db"
    assert main(["chat", "hi", *TINY, "--db", str(missing)]) == 2
    assert f"folder {missing.parent} does not exist" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "no").exists()

    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"these are not the bytes of a database" * 100)
    assert main(["chat", "hi", *TINY, "--db", str(corrupt)]) == 2
    assert "is not an SQLite database" in error_line(capsys.readouterr().err)
    assert corrupt.read_bytes() == b"these are not the bytes of a database" * 100

    locked = tmp_path / "locked.db"
    run(read(locked))  # a Baton database...
    holder = sqlite3.connect(locked, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # ...that another program holds
    monkeypatch.setattr(chat_history, "BUSY_TIMEOUT_S", 0.1)
    try:
        assert main(["chat", "hi", *TINY, "--db", str(locked)]) == 2
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "locked by another process" in error_line(capsys.readouterr().err)


def test_a_prompt_the_engine_refuses_stores_nothing(tmp_path, capsys, monkeypatch):
    db = tmp_path / "history.db"
    assert main(["chat", "x " * 3000, *TINY, "--db", str(db)]) == 2  # random:tiny has 2048 positions
    assert "context" in error_line(capsys.readouterr().err)
    assert run(read(db)) == []  # the chat this turn made is taken back
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n" + "y " * 3000 + "\nshort again\n"))
    assert main(["chat", *SHORT, "--db", str(db)]) == 0  # the long turn is dropped, the conversation goes on
    assert "turn dropped" in capsys.readouterr().err
    ((_, messages),) = run(read(db))
    assert [m.content for m in messages if m.role == "user"] == ["short", "short again"]


@pytest.mark.parametrize("failure", [KeyboardInterrupt, BrokenPipeError], ids=["ctrl-c", "closed-pipe"])
def test_an_answer_cut_short_keeps_its_partial_text_as_cancelled(tmp_path, capsys, monkeypatch, failure):
    class CutShort(io.StringIO):
        """Stdout that fails at the third piece of the answer (as Ctrl-C or a reader going away would)."""

        pieces = 0

        def write(self, text):
            if self.pieces == 2:
                raise failure()
            self.pieces += 1
            return super().write(text)

    db = tmp_path / "history.db"
    out = CutShort()
    monkeypatch.setattr(sys, "stdout", out)
    status = main(["chat", "talk", *TINY, "--max-tokens", "50", "--db", str(db)])
    assert status == (130 if failure is KeyboardInterrupt else 1)
    ((_, (user, answer)),) = run(read(db))
    assert answer.finish_reason == "cancelled" and answer.content.startswith(out.getvalue())
    assert answer.content and answer.completion_tokens >= 2


def test_the_console_entry_point_stores_and_continues(tmp_path):
    db = str(tmp_path / "history.db")

    def baton(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "app.cli", "chat", *args, *SHORT, "--db", db],
                              capture_output=True, text=True, timeout=300, cwd=REPO)

    first = baton("hello")
    assert first.returncode == 0, first.stderr
    assert STORED.match(first.stderr.strip()) and first.stdout.strip()
    again = baton("-c", "and again")
    assert again.returncode == 0, again.stderr
    ((chat, messages),) = run(read(Path(db)))
    assert [m.content for m in messages if m.role == "user"] == ["hello", "and again"]
    assert messages[1].content == first.stdout.rstrip("\n") and messages[3].content == again.stdout.rstrip("\n")
