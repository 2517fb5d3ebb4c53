"""The `baton` command line (app/cli.py, app/chat_cmd.py, app/batch_cmd.py) end to end.

Most tests run `main([...])` in-process on `random:tiny` (random weights, loads in about 2 s); a few run the
console script in a subprocess. `real_model` tests load the default SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from app.cli import batch_cmd, chat_cmd
from app.cli.chat_history import HistoryOptions
from app.cli import build_parser, main
from app.cli.engine_options import engine_config, parse_size
from backend import EngineConfig, SamplingParams

TINY = ["--model", "random:tiny"]
URL = "/v1/chat/completions"
REPO = Path(__file__).resolve().parents[1]


def request(custom_id, **body) -> str:
    body.setdefault("messages", [{"role": "user", "content": f"hello {custom_id}"}])
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": URL, "body": body})


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("baton: error: ") and "Traceback" not in err
    return lines[0]


#: the stats line `baton chat` prints on stderr after each answer
STATS = re.compile(r"^baton: (chat \d+ · )?\d+ tokens( · TTFT \d+ ms)?( · \d+ cached)?( · [\d.]+ tok/s)?( · [a-z ]+)?$")


def stats_lines(err: str) -> list[str]:
    return [x for x in err.splitlines() if STATS.match(x)]


def without_stats(err: str) -> str:
    return "\n".join(x for x in err.splitlines() if not STATS.match(x))


def one_summary(err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("baton: batch: ")]
    assert len(lines) == 1, err
    m = re.search(r"(\d+) output tokens in ([\d.]+) s \(([\d.]+) tok/s", lines[0])
    assert m and int(m.group(1)) > 0 and float(m.group(2)) > 0 and float(m.group(3)) > 0, lines[0]
    return lines[0]


# --------------------------------------------------------------------------------------- top level
def test_no_arguments_opens_the_tui(monkeypatch):
    import app.tui

    calls = []
    monkeypatch.setattr(app.tui, "run_tui", lambda config, db, theme: calls.append((config, db, theme)) or 0)
    assert main([]) == 0
    assert main(["tui", "--model", "random:tiny", "--db", "x.db", "--theme", "nord", "--max-batch-size", "4"]) == 0
    assert main(["--model", "random:tiny", "--device", "cpu", "--theme", "baton-dark"]) == 0
    (default, none, no_theme), (tiny, db, theme), (cpu, _, dark) = calls
    # the engine's defaults, but with the interactive latency target every command runs with (issue #13), and
    # the engine core in a child process (the TUI's drawing must not hold the GIL its steps need)
    assert default == EngineConfig(interactive_tpot_slo=1.5, process=True) and none is None and no_theme is None
    assert (tiny.model, tiny.max_batch_size, db, theme) == ("random:tiny", 4, "x.db", "nord")
    assert (cpu.model, cpu.device, dark) == ("random:tiny", "cpu", "baton-dark")


def test_engine_process_defaults_on_for_the_tui_only(monkeypatch):
    from app.cli.main import build_parser
    from app.cli.engine_options import engine_config

    def process(*argv: str) -> bool:
        return engine_config(build_parser().parse_args(list(argv))).process

    assert process() and process("tui") and not process("serve")
    assert not process("chat", "hi") and not process("batch", "in.jsonl", "-o", "out.jsonl")
    assert not process("jobs", "run")
    assert not process("--engine-process", "off") and process("chat", "hi", "--engine-process", "on")
    assert engine_config(build_parser().parse_args(["--threads", "3"])).threads == 3
    assert main(["--threads", "0"]) == 2


def test_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: baton") and "tui" in out and "chat" in out and "batch" in out and "--db" in out


def test_tui_option_errors_exit_2(capsys):
    assert main(["--theme", "no-such-theme"]) == 2
    assert one_error_line(capsys.readouterr().err).startswith("baton: error: --theme: unknown theme 'no-such-theme'")
    assert main(["--max-batch-size", "0"]) == 2
    assert "--max-batch-size" in one_error_line(capsys.readouterr().err)


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"baton {metadata.version('baton-chat')}\n"


def test_the_program_ends_at_once_after_main_with_its_output_flushed(tmp_path):
    """`baton` (`app.cli.run`) skips the interpreter's teardown once main has returned (issue #10.5: seconds of
    collecting torch's and the TUI's objects after the TUI had closed): no exit handler runs, output is there."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('TEARDOWN'))\n"
            "from app.cli import run\n"
            "sys.argv = ['baton', *sys.argv[1:]]\n"
            "print('buffered', end='')\n"
            "run()\n")
    for args, status in ((["--version"], 0), (["--max-batch-size", "0"], 2)):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                              cwd=Path(__file__).resolve().parent.parent)
        assert done.returncode == status, done.stderr
        assert "TEARDOWN" not in done.stdout and done.stdout.startswith("buffered")
    assert done.stderr.startswith("baton: error: --max-batch-size")


def test_argparse_usage_errors_exit_2(capsys):
    assert main(["chat", "hi", "--temperature", "warm"]) == 2
    assert "invalid float value" in capsys.readouterr().err
    assert main(["batch", "in.jsonl"]) == 2  # -o is required
    assert "-o/--output" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- chat
def test_chat_streams_an_answer(capsys):
    assert main(["chat", "hello", *TINY, "--max-tokens", "6", "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.out.endswith("\n") and captured.out.strip()
    assert "Traceback" not in captured.err


def test_chat_seed_makes_sampling_reproducible(capsys):
    args = ["chat", "hello", "--system", "be brief", *TINY, "--max-tokens", "6", "--temperature", "1.5"]
    assert main([*args, "--seed", "7"]) == 0
    first = capsys.readouterr().out
    assert main([*args, "--seed", "7"]) == 0
    assert capsys.readouterr().out == first


def test_chat_writes_and_flushes_each_delta():
    class Recorder:
        encoding = "utf-8"

        def __init__(self):
            self.events = []

        def write(self, text):
            self.events.append(("write", text))

        def flush(self):
            self.events.append(("flush", None))

    rec = Recorder()
    rc = chat_cmd.run_chat(EngineConfig(model="random:tiny"), "hi", out=rec, history=HistoryOptions(log=False),
                           overrides={"max_tokens": 8, "temperature": 0.0, "extra": {"ignore_eos": True}})
    assert rc == 0
    writes = [i for i, (kind, _) in enumerate(rec.events) if kind == "write"]
    assert len(writes) >= 3  # streamed in pieces, not one final write
    assert all(rec.events[i + 1][0] == "flush" for i in writes)  # each piece is flushed at once
    assert rec.events[writes[-1]][1] == "\n"


def test_chat_without_question_is_a_conversation_over_stdin(capsys, monkeypatch):
    seen = []
    real_stream = chat_cmd.stream_answer

    async def spy(engine, messages, params, out, take=None):
        seen.append([dict(m) for m in messages])
        return await real_stream(engine, messages, params, out, take)

    monkeypatch.setattr(chat_cmd, "stream_answer", spy)
    monkeypatch.setattr(sys, "stdin", io.StringIO("first question\n\n  \nsecond question\n"))
    assert main(["chat", *TINY, "--system", "be brief", "--max-tokens", "4", "--temperature", "0"]) == 0
    assert len(seen) == 2  # blank lines are skipped
    assert seen[0] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first question"}]
    assert [m["role"] for m in seen[1]] == ["system", "user", "assistant", "user"]  # the history goes along
    assert seen[1][3] == {"role": "user", "content": "second question"}
    out = capsys.readouterr().out
    assert out.startswith(seen[1][2]["content"] + "\n")  # the first answer, streamed; no "> " prompt off a tty


def test_chat_into_a_closed_pipe_stops_quietly(capsys, monkeypatch):
    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["chat", "hi", *TINY, "--max-tokens", "4", "--temperature", "0"]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_chat_stdin_that_is_not_utf8_is_one_usage_error_naming_the_line(capsys, monkeypatch):
    """Undecodable bytes on stdin end the conversation with exit status 2 (not a traceback, not a guess)."""
    stdin = io.TextIOWrapper(io.BytesIO(b"first question\nsecond \xff\xfe question\nthird\n"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["chat", *TINY, "--max-tokens", "3", "--temperature", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1  # the first question was answered; the third never asked
    assert len(stats_lines(captured.err)) == 1
    line = one_error_line(without_stats(captured.err))
    assert "stdin line 2" in line and "UTF-8" in line and "0xff" in line


@pytest.mark.parametrize("args", [["hi \udcff"], ["hi", "--system", "be \udcff brief"]], ids=["question", "system"])
def test_chat_arguments_that_are_not_utf8_exit_2_before_loading_the_model(capsys, monkeypatch, args):
    """An argument with bytes that are not UTF-8 reaches Python as a lone surrogate (surrogateescape)."""
    monkeypatch.setattr(chat_cmd, "start_engine", lambda config: pytest.fail("the model was loaded"))
    assert main(["chat", *args, *TINY]) == 2
    assert "not valid UTF-8 text" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("args, option", [
    (["--temperature", "-1"], "--temperature: must be >= 0"),
    (["--max-tokens", "0"], "--max-tokens: must be >= 1"),
    (["--max-batch-size", "0"], "--max-batch-size: must be an integer >= 1"),
    (["--max-prefill-tokens", "0"], "--max-prefill-tokens: must be an integer >= 1"),
    (["--dtype", "int4"], "--dtype: must be one of"),
])
def test_chat_bad_option_value_exits_2_with_one_line(capsys, args, option):
    assert main(["chat", "hi", *TINY, *args]) == 2
    captured = capsys.readouterr()
    assert option in one_error_line(captured.err)
    assert captured.out == ""


def test_chat_unknown_model_exits_2_naming_it(capsys):
    assert main(["chat", "hi", "--model", "no-such-model"]) == 2
    assert "'no-such-model'" in one_error_line(capsys.readouterr().err)


def test_chat_empty_question_exits_2(capsys):
    assert main(["chat", "  ", *TINY]) == 2
    assert "question" in one_error_line(capsys.readouterr().err)


def test_chat_prompt_longer_than_context_exits_2(capsys):
    assert main(["chat", "x " * 3000, *TINY, "--max-tokens", "2"]) == 2  # random:tiny has 2048 positions
    assert "context" in one_error_line(capsys.readouterr().err)


# -------------------------------------------------------------------------------------------- batch
def test_batch_round_trip(tmp_path, capsys):
    lines = [
        request("short", max_tokens=3, ignore_eos=True, temperature=0),
        request("long", max_completion_tokens=9, ignore_eos=True, temperature=0,
                messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]),
        request("seeded-1", max_tokens=6, ignore_eos=True, seed=11, temperature=0.9, model="gpt-4o-mini",
                messages=[{"role": "user", "content": "same"}]),
        "{this is not json",
        request("n2", n=2),
        request("seeded-2", max_tokens=6, ignore_eos=True, seed=11, temperature=0.9,
                messages=[{"role": "user", "content": "same"}]),
        request("cold", temperature=-1),
        request("unknown", frobnicate=True),
        request("stopped", max_tokens=12, stop=["a", "e", "o"], top_k=5, top_p=0.9),
        request("short", max_tokens=2),  # duplicate custom_id
        json.dumps({"custom_id": "wrong-url", "method": "POST", "url": "/v1/embeddings", "body": {}}),
    ]
    inp = write_lines(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(inp), "-o", str(out), *TINY]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout stays clean
    summary = one_summary(captured.err)
    assert "5 ok, 6 failed" in summary and str(out) in summary
    assert captured.err.strip() == summary  # no progress bar when stderr is not a terminal

    rows = read_jsonl(out)
    assert [r["custom_id"] for r in rows] == ["short", "long", "seeded-1", None, "n2", "seeded-2", "cold",
                                              "unknown", "stopped", "short", "wrong-url"]
    failed = {i for i, r in enumerate(rows) if r["error"] is not None}
    assert failed == {3, 4, 6, 7, 9, 10}
    for i, r in enumerate(rows):
        assert r["id"].startswith("batch_req_")
        if i in failed:
            assert r["response"] is None and r["error"]["code"] and r["error"]["message"]
        else:
            assert r["error"] is None and r["response"]["status_code"] == 200
    codes = [rows[i]["error"]["code"] for i in sorted(failed)]
    assert codes == ["invalid_json_line", "unsupported_parameter", "invalid_value", "unsupported_parameter",
                     "duplicate_custom_id", "invalid_url"]
    assert "temperature" in rows[6]["error"]["message"] and "frobnicate" in rows[7]["error"]["message"]

    bodies = {r["custom_id"]: r["response"]["body"] for r in rows if r["response"]}
    for cid, max_tokens in [("short", 3), ("long", 9), ("seeded-1", 6), ("seeded-2", 6)]:
        body = bodies[cid]
        assert body["object"] == "chat.completion" and body["model"] == "random:tiny"
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["choices"][0]["message"]["role"] == "assistant"
        usage = body["usage"]
        assert usage["completion_tokens"] == max_tokens
        assert usage["total_tokens"] == usage["prompt_tokens"] + max_tokens and usage["prompt_tokens"] > 0
    assert bodies["long"]["usage"]["prompt_tokens"] > bodies["short"]["usage"]["prompt_tokens"]  # system msg
    text = lambda cid: bodies[cid]["choices"][0]["message"]["content"]  # noqa: E731
    assert text("seeded-1") == text("seeded-2")  # the same seed samples the same tokens, whatever the batch
    stopped = bodies["stopped"]["choices"][0]
    assert not any(s in stopped["message"]["content"] for s in "aeo")
    assert stopped["finish_reason"] in ("stop", "length")
    assert bodies["stopped"]["usage"]["completion_tokens"] <= 12


def test_batch_lines_sharing_a_system_prompt_report_cached_tokens(tmp_path, capsys):
    """Lines that repeat one long system prompt prefill it once: the others report it as
    `usage.prompt_tokens_details.cached_tokens` (OpenAI's field), and `--prefix-cache 0` reports none."""
    system = "You answer in the voice of a patient librarian who cites sources. " * 5
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"messages": [{"role": "system", "content": system}, {"role": "user", "content": f"q {i}"}],
                       "max_tokens": 3, "temperature": 0}} for i in range(4)]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cached = {}
    for size in ("64MiB", "0"):
        out = tmp_path / f"out-{size}.jsonl"
        assert main(["batch", str(inp), "-o", str(out), *TINY, "--prefix-cache", size]) == 0
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        cached[size] = [r["response"]["body"]["usage"]["prompt_tokens_details"]["cached_tokens"] for r in rows]
    assert sum(cached["64MiB"]) >= 3 * 64 and cached["0"] == [0, 0, 0, 0]


def test_batch_unreadable_input_exits_2(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(tmp_path / "missing.jsonl"), "-o", str(out), *TINY]) == 2
    assert "missing.jsonl" in one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_batch_unwritable_output_exits_2_before_loading(tmp_path, capsys):
    inp = write_lines(tmp_path / "in.jsonl", [request("a")])
    assert main(["batch", str(inp), "-o", str(tmp_path / "no" / "dir" / "out.jsonl"), *TINY]) == 2
    assert "out.jsonl" in one_error_line(capsys.readouterr().err)
    assert main(["batch", str(inp), "-o", str(tmp_path), *TINY]) == 2  # a directory
    assert "directory" in one_error_line(capsys.readouterr().err)


def test_batch_unknown_model_exits_2_and_writes_nothing(tmp_path, capsys):
    inp = write_lines(tmp_path / "in.jsonl", [request("a")])
    assert main(["batch", str(inp), "-o", str(tmp_path / "out.jsonl"), "--model", "random:nope"]) == 2
    assert "nope" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no output, no temp file


def test_batch_crash_leaves_old_output_and_no_temp_file(tmp_path, monkeypatch, capsys):
    inp = write_lines(tmp_path / "in.jsonl", [request("a"), request("b")])
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")

    class FakeEngine:
        def shutdown(self):
            pass

    def crash(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(batch_cmd, "start_engine", lambda config: FakeEngine())
    monkeypatch.setattr(batch_cmd, "_run_entries", crash)
    with pytest.raises(RuntimeError, match="boom"):
        main(["batch", str(inp), "-o", str(out)])
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_batch_of_only_bad_lines_completes(tmp_path, capsys):
    too_long = [{"role": "user", "content": "x " * 3000}]  # random:tiny has 2048 positions
    inp = write_lines(tmp_path / "in.jsonl", ["[]", "", request("x", stream=True), request("y", messages=too_long)])
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(inp), "-o", str(out), *TINY]) == 0
    rows = read_jsonl(out)
    assert [(r["custom_id"], r["error"]["code"]) for r in rows] == [
        (None, "invalid_request"), ("x", "unsupported_parameter"), ("y", "invalid_value")]
    assert "context" in rows[2]["error"]["message"]
    assert "0 ok, 3 failed" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["same path", "another path", "symlink", "hard link"])
def test_batch_refuses_to_write_over_its_input_before_loading_the_model(tmp_path, capsys, monkeypatch, how):
    inp = write_lines(tmp_path / "in.jsonl", [request("a")])
    before = inp.read_bytes()
    (tmp_path / "sub").mkdir()
    out = {"same path": inp, "another path": tmp_path / "sub" / ".." / "in.jsonl",
           "symlink": tmp_path / "link.jsonl", "hard link": tmp_path / "hard.jsonl"}[how]
    if how == "symlink":
        out.symlink_to(inp)
    elif how == "hard link":
        out.hardlink_to(inp)
    monkeypatch.setattr(batch_cmd, "start_engine", lambda config: pytest.fail("the model was loaded"))
    assert main(["batch", str(inp), "-o", str(out), *TINY]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(out) in line and "is the input file" in line
    assert inp.read_bytes() == before and (how != "symlink" or out.is_symlink())


@pytest.mark.parametrize("content", ["", "\n  \n\t\n"], ids=["empty", "blank"])
def test_batch_and_jobs_submit_refuse_a_file_without_requests_alike(tmp_path, capsys, monkeypatch, content):
    inp = tmp_path / "in.jsonl"
    inp.write_text(content, encoding="utf-8")
    monkeypatch.setattr(batch_cmd, "start_engine", lambda config: pytest.fail("the model was loaded"))
    assert main(["batch", str(inp), "-o", str(tmp_path / "out.jsonl"), *TINY]) == 2
    batch_line = one_error_line(capsys.readouterr().err)
    assert batch_line == f"baton: error: {inp}: the batch file has no requests (it is empty or every line is blank)"
    assert not (tmp_path / "out.jsonl").exists()
    assert main(["jobs", "submit", str(inp), "--db", str(tmp_path / "jobs.db")]) == 2
    assert one_error_line(capsys.readouterr().err) == batch_line


def test_batch_line_with_a_lone_surrogate_fails_alone(tmp_path, capsys):
    bad = request("bad").replace("hello bad", "hello \\ud83d")  # valid JSON, not valid UTF-8 text
    inp = write_lines(tmp_path / "in.jsonl", [bad, request("good", max_tokens=2)])
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(inp), "-o", str(out), *TINY]) == 0
    assert "1 ok, 1 failed" in capsys.readouterr().err
    bad_row, good_row = read_jsonl(out)
    assert bad_row["custom_id"] == "bad" and bad_row["error"]["code"] == "invalid_value"
    assert "body.messages[0].content" in bad_row["error"]["message"]
    assert good_row["custom_id"] == "good" and good_row["error"] is None


def test_batch_progress_bar_goes_to_err(tmp_path, capsys):
    inp = write_lines(tmp_path / "in.jsonl", [request(str(i), max_tokens=4, ignore_eos=True) for i in range(3)])
    err = io.StringIO()
    summary = batch_cmd.run_batch(EngineConfig(model="random:tiny"), inp, tmp_path / "out.jsonl",
                                     progress=True, err=err)
    assert (summary.ok, summary.failed, summary.output_tokens) == (3, 0, 12)
    text = err.getvalue()
    assert "3/3" in text and "tok/s" in text and text.rstrip().endswith("out.jsonl")
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------------------------ subprocesses
def baton(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the CLI as `python -m app.cli` (the same `main` as the `baton` console script)."""
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_console_script_runs_chat():
    script = Path(sys.executable).with_name("baton")
    if not script.exists():
        pytest.skip("the baton console script is not installed in this environment")
    proc = subprocess.run([str(script), "chat", "hi", *TINY, "--max-tokens", "4", "--temperature", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_module_entry_points_report_bad_arguments_without_traceback():
    proc = baton("chat", "hi", *TINY, "--temperature", "-2")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "--temperature" in one_error_line(proc.stderr)
    proc = subprocess.run([sys.executable, "-m", "app", "--version"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.startswith("baton ")


# -------------------------------------------------------------------------------------- real model
@pytest.mark.real_model
def test_real_model_chat_knows_paris():
    proc = baton("chat", "What is the capital of France?", "--temperature", "0", "--max-tokens", "64", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout


@pytest.mark.real_model
def test_real_model_batch_round_trip(tmp_path):
    inp = write_lines(tmp_path / "in.jsonl", [
        request("france", temperature=0, max_tokens=32,
                messages=[{"role": "user", "content": "What is the capital of France?"}]),
        '{"custom_id": "broken", ',
        request("count", max_tokens=8, ignore_eos=True, seed=1, messages=[{"role": "user", "content": "Count."}]),
    ])
    out = tmp_path / "out.jsonl"
    proc = baton("batch", str(inp), "-o", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "2 ok, 1 failed" in proc.stderr
    rows = read_jsonl(out)
    assert [r["custom_id"] for r in rows] == ["france", None, "count"]
    assert "Paris" in rows[0]["response"]["body"]["choices"][0]["message"]["content"]
    assert rows[0]["response"]["body"]["model"] == "smollm2-135m-instruct"
    assert rows[1]["response"] is None and rows[1]["error"]["code"] == "invalid_json_line"
    count = rows[2]["response"]["body"]
    assert count["usage"]["completion_tokens"] == 8 and count["choices"][0]["finish_reason"] == "length"


def test_jobs_command_is_wired_into_baton(tmp_path, capsys):
    from app.cli import main as baton_main

    db = str(tmp_path / "jobs.db")
    job = tmp_path / "job.jsonl"
    job.write_text('{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", '
                   '"body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}}\n')
    assert baton_main(["jobs", "submit", str(job), "--db", db]) == 0
    assert baton_main(["jobs", "list", "--db", db]) == 0
    assert "queued" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["chat", "hi"], ["tui"], ["batch", "in.jsonl", "-o", "out.jsonl"], ["jobs", "run"]])
def test_engine_options_reach_the_engine_config_of_every_command(argv):
    args = build_parser().parse_args([*argv, "--max-prefill-tokens", "512", "--max-batch-size", "3",
                                      "--model", "random:tiny", "--kv-budget", "1.5GiB"])
    config = engine_config(args)
    assert (config.max_prefill_tokens, config.max_batch_size, config.model) == (512, 3, "random:tiny")
    assert config.kv_budget_bytes == 3 * 2**29
    assert engine_config(build_parser().parse_args(argv)).kv_budget_bytes is None  # the default: from memory


ENGINE_COMMANDS = [["chat", "hi"], ["tui"], ["batch", "in.jsonl", "-o", "out.jsonl"], ["jobs", "run"]]


@pytest.mark.parametrize("argv", ENGINE_COMMANDS)
@pytest.mark.parametrize("option, field, text, value", [
    *(("--prefix-cache", "prefix_cache_bytes", text, size)
      for text, size in [("1GiB", 2**30), ("0", 0), ("off", 0), (None, None)]),
    *(("--compile", "compile", text, mode)
      for text, mode in [("inductor", "inductor"), ("off", "off"), ("cuda-graphs", "cuda-graphs"), (None, "auto")]),
])
def test_an_engine_option_reaches_every_command(argv, option, field, text, value):
    """`--prefix-cache` and `--compile` (and their defaults, when not given) reach each command's engine."""
    extra = [option, text] if text is not None else []
    assert getattr(engine_config(build_parser().parse_args([*argv, *extra])), field) == value


def test_a_bad_prefix_cache_size_is_one_usage_line(capsys):
    assert main(["chat", "hi", *TINY, "--prefix-cache", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--prefix-cache" in err and "must be 0 (off) or a size" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["chat", "hi"], ["tui"], ["batch", "in.jsonl", "-o", "out.jsonl"], ["jobs", "run"]])
@pytest.mark.parametrize("text, multiple", [("2", 2.0), ("1", 1.0), ("off", None), (None, 1.5)])
def test_the_interactive_target_reaches_every_command(argv, text, multiple):
    extra = ["--interactive-slo", text] if text is not None else []
    assert engine_config(build_parser().parse_args([*argv, *extra])).interactive_tpot_slo == multiple


@pytest.mark.parametrize("text", ["0.5", "nan", "inf", "fast"])
def test_a_bad_interactive_target_is_one_usage_line(capsys, text):
    assert main(["chat", "hi", *TINY, "--interactive-slo", text]) == 2
    err = capsys.readouterr().err
    assert "--interactive-slo" in err and "must be a number >= 1" in err and "Traceback" not in err


@pytest.mark.parametrize("text, size", [("1048576", 2**20), ("512MiB", 2**29), ("2 gib", 2**31), ("1.5GB", 1.5e9),
                                        ("64kb", 64_000), ("3b", 3)])
def test_kv_budget_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["1" * 400, "9" * 309 + "GiB", "9223372036854775808", "8EiB", "16777216TiB"])
def test_a_size_too_large_is_a_usage_error_not_an_overflow(text):
    with pytest.raises(argparse.ArgumentTypeError, match="must be a positive size"):
        parse_size(text)


def test_a_bad_kv_budget_is_one_usage_line(capsys):
    assert main(["chat", "hi", *TINY, "--kv-budget", "lots"]) == 2
    err = capsys.readouterr().err
    assert "--kv-budget" in err and "must be a positive size such as 512MiB" in err and "Traceback" not in err


def test_a_kv_budget_too_small_for_the_prompt_is_a_clear_error(capsys):
    assert main(["chat", "hi", *TINY, "--kv-budget", "4KiB", "--max-tokens", "64"]) != 0
    assert "could never run" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["jobs", "list"], ["jobs", "submit", "job.jsonl"], ["tui", *TINY],
                                  ["chat", "hi", *TINY]])
def test_a_db_path_in_a_missing_folder_exits_2_naming_it(tmp_path, capsys, argv):
    """A typo in `--db` must not start a new, empty history somewhere: one error line, status 2, nothing created."""
    db = tmp_path / "no" / "such" / "baton.db"
    assert main([*argv, "--db", str(db)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("baton: error: "), err
    assert str(db) in err and f"folder {db.parent} does not exist" in err
    assert not (tmp_path / "no").exists()


def test_a_bad_compile_mode_is_one_usage_line(capsys):
    assert main(["chat", "hi", *TINY, "--compile", "fast"]) == 2
    err = capsys.readouterr().err
    assert "--compile" in err and "invalid choice" in err and "Traceback" not in err
    assert main(["chat", "hi", *TINY, "--device", "cpu", "--compile", "cuda-graphs"]) == 2
    assert one_error_line(capsys.readouterr().err).startswith("baton: error: --compile: 'cuda-graphs' needs a CUDA")
