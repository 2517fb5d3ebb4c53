"""Persistent background jobs (app/jobs/, app/cli/jobs_cmd.py): files, batch jobs, agent tasks, pause / resume /
cancel, progress, and the `baton jobs` command, on a real engine (`random:tiny`) and a real SQLite file.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from app.jobs import JobRunner, load_job_file, submit_job
from app.jobs import templates
from app.cli import main
from backend import Priority
from storage import Store

URL = "/v1/chat/completions"


def request(custom_id: str, max_tokens: int = 8, **body) -> str:
    body.setdefault("messages", [{"role": "user", "content": f"hello {custom_id}"}])
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": URL,
                       "body": {"max_tokens": max_tokens, "ignore_eos": True, **body}})


def batch_file(path: Path, n: int, max_tokens: int = 8, bad_at: int | None = None) -> Path:
    lines = [request(f"req-{i}", max_tokens) for i in range(n)]
    if bad_at is not None:
        lines.insert(bad_at, '{"custom_id": "broken", "method": "POST"')  # not valid JSON
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return path


AGENT = {"name": "chain", "system": "You are terse.",
         "params": {"temperature": 0, "max_tokens": 12, "ignore_eos": True},
         "steps": [{"prompt": "Name a colour."}, {"prompt": "Why {previous}? Keep {{braces}}."},
                   {"prompt": "First: {step1} / then: {previous}"}]}


# A job acted on mid-run (pause, cancel, shutdown) must still be running when the test acts: the first item
# finishes after ~0.1 s on random:tiny, and pairs of 150-token items keep coming for far longer than that.
MANY = 200  # items in a job that is cancelled or stopped (the rest never run)
N_PAUSED = 24  # items in the job that is paused and then finished


@pytest.fixture
async def store(tmp_path):
    async with await Store.open(tmp_path / "jobs.db") as s:
        yield s


@pytest.fixture
def engine(make_engine):
    return make_engine(max_batch_size=4)


class Recorder:
    """Wraps `engine.generate` to count submissions by priority."""

    def __init__(self, engine):
        self.priorities: list[Priority] = []
        original = engine.generate

        def generate(prompt, params=None, priority=Priority.INTERACTIVE, request_id=None):
            self.priorities.append(priority)
            return original(prompt, params, priority=priority, request_id=request_id)

        engine.generate = generate


async def wait_for(predicate, timeout: float = 120.0) -> None:  # a bound for a stuck runner, not a speed target
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------------------- files
def test_batch_file_becomes_one_item_per_line_malformed_ones_carry_their_error(tmp_path):
    kind, name, items, spec = load_job_file(batch_file(tmp_path / "reqs.jsonl", 3, bad_at=1))
    assert (kind, name, spec) == ("batch", "reqs", {"format": "openai_batch"})
    assert [i["custom_id"] for i in items] == ["req-0", None, "req-1", "req-2"]
    assert items[1]["error"]["code"] == "invalid_json_line" and items[1]["line_no"] == 2
    assert items[0]["messages"] == [{"role": "user", "content": "hello req-0"}]
    assert items[0]["sampling"]["max_tokens"] == 8 and items[0]["sampling"]["ignore_eos"] is True


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".task"])
def test_agent_file_yaml_or_json(tmp_path, suffix):
    path = tmp_path / f"task{suffix}"
    path.write_text(json.dumps(AGENT), encoding="utf-8")  # JSON is YAML too
    kind, name, items, spec = load_job_file(path)
    assert (kind, name) == ("agent", "chain")
    assert [i["step"] for i in items] == [1, 2, 3] and items[1]["prompt"] == AGENT["steps"][1]["prompt"]
    assert spec == {"system": "You are terse.", "params": {"temperature": 0, "top_p": 1.0, "max_tokens": 12,
                                                           "ignore_eos": True}}
    assert load_job_file(path, name="other")[1] == "other"


@pytest.mark.parametrize("name, text, message", [
    ("empty.jsonl", "\n \n", "no requests"),
    ("list.yaml", "- a\n- b\n", "must be a mapping"),
    ("nosteps.json", '{"name": "x"}', 'needs "steps"'),
    ("badjson.json", '{"steps": [', "not valid JSON"),
    ("badyaml.yaml", "steps: [\n", "not valid YAML"),
    ("extra.yaml", "steps: [{prompt: hi}]\ncolour: red\n", "unknown field(s) colour"),
    ("nostep.yaml", "steps: []\n", "non-empty list"),
    ("stepfield.yaml", "steps: [{prompt: hi, tools: []}]\n", "step 1: must be a mapping with only"),
    ("unknown.yaml", "steps: [{prompt: hi}, {prompt: 'say {answer}'}]\n", "step 2: unknown placeholder {answer}"),
    ("first.yaml", "steps: [{prompt: 'go on from {previous}'}]\n", "step 1: {previous}"),
    ("later.yaml", "steps: [{prompt: hi}, {prompt: 'x {step2}'}]\n", "step 2: {step2} names a step"),
    ("brace.yaml", "steps: [{prompt: 'a } b'}]\n", "step 1: Single '}'"),
    ("spec.yaml", "steps: [{prompt: hi}, {prompt: '{previous!r}'}]\n", "conversion or format spec"),
    ("params.yaml", "steps: [{prompt: hi}]\nparams: {temperature: -1}\n", "params.temperature: must be >= 0"),
    ("pkey.yaml", "steps: [{prompt: hi}]\nparams: {tools: 1}\n", "params: unknown field(s) tools"),
    ("what.txt", "hello there\n", "not a job file"),
    ("deep.yaml", "[" * 100_000, "not valid YAML: nested too deeply"),
    ("deep.json", '{"steps": ' * 100_000, "not valid JSON: nested too deeply"),
])
def test_bad_job_files_raise_value_errors_naming_file_and_problem(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_job_file(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


@pytest.mark.parametrize("name, text, field", [
    ("task.yaml", 'steps: [{prompt: "hi \\ud83d"}]\n', "steps[0].prompt"),
    ("task.json", '{"system": "\\udc80", "steps": [{"prompt": "hi"}]}', "system"),
    ("task.yml", 'steps: [{prompt: hi}]\nparams: {stop: ["\\ud800"]}\n', "params.stop[0]"),
])
def test_agent_task_with_a_lone_surrogate_names_the_file_and_field(tmp_path, name, text, field):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_job_file(path)
    assert str(info.value).startswith(f"{path}: {field}: not valid UTF-8 text")


def test_a_job_name_that_is_not_utf8_is_refused_and_a_file_name_made_readable(tmp_path):
    path = batch_file(tmp_path / "req\udcff.jsonl", 1)  # a file name with the byte 0xff (surrogateescape)
    with pytest.raises(ValueError, match="^name: not valid UTF-8 text"):
        load_job_file(path, name="night\udcff")
    kind, name, items, spec = load_job_file(path)
    assert name == "req\ufffd"


def test_missing_job_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read the job file"):
        load_job_file(tmp_path / "nope.jsonl")


def test_templates_fill_previous_and_numbered_steps_keep_doubled_braces():
    assert templates.render("{step1}+{previous} {{x}}", 3, ["a", "b"]) == "a+b {x}"
    assert templates.render("no placeholders", 1, []) == "no placeholders"
    with pytest.raises(ValueError, match="unknown placeholder {previous.upper}"):
        templates.render("{previous.upper}", 2, ["a"])


# ---------------------------------------------------------------------------------------- batch jobs
async def test_batch_job_runs_every_item_once_and_exports_in_order(tmp_path, store, engine):
    job = await submit_job(store, batch_file(tmp_path / "reqs.jsonl", 5, max_tokens=6, bad_at=2))
    assert (job.kind, job.status, job.total) == ("batch", "queued", 6)
    recorder = Recorder(engine)
    seen = []
    runner = JobRunner(store, engine, on_progress=seen.append)
    assert await runner.run_queued() == [job.id]
    job = await store.get_job(job.id)
    assert (job.status, job.done, job.failed, job.total) == ("done", 5, 1, 6)
    assert recorder.priorities == [Priority.BATCH] * 5
    items = await store.list_items(job.id)
    for item in items:
        if item.idx == 2:
            assert item.status == "failed" and item.error.startswith("invalid_json_line: line 3: not valid JSON")
            continue
        body = item.result["response"]["body"]
        assert item.status == "done" and body["usage"]["completion_tokens"] == 6
        assert item.result["custom_id"] == item.custom_id and body["choices"][0]["finish_reason"] == "length"
    final = seen[-1]
    assert (final.status, final.done, final.failed, final.total, final.pending) == ("done", 5, 1, 6, 0)
    assert final.output_tokens == 30 and final.tokens_per_s > 0
    assert [p.done + p.failed for p in seen] == sorted(p.done + p.failed for p in seen)  # never goes back

    await runner.run_job(job.id)  # a finished job is not run again
    assert len(recorder.priorities) == 5

    out = tmp_path / "out.jsonl"
    assert await asyncio.to_thread(main, ["jobs", "export", str(job.id), "-o", str(out), "--db", store.path]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == ["req-0", "req-1", None, "req-2", "req-3", "req-4"]
    assert lines[2]["response"] is None and lines[2]["error"]["code"] == "invalid_json_line"
    assert lines[0] == items[0].result  # the stored output line, unchanged


async def test_pause_stops_in_flight_requests_and_resume_finishes_each_item_once(tmp_path, store, make_engine):
    engine = make_engine(max_batch_size=2)
    job = await submit_job(store, batch_file(tmp_path / "reqs.jsonl", N_PAUSED, max_tokens=150))
    recorder = Recorder(engine)
    runner = JobRunner(store, engine)
    task = asyncio.create_task(runner.run_job(job.id))
    await wait_for(lambda: _done_at_least(store, job.id, 1))
    assert (await runner.pause(job.id)).status == "paused"
    paused = await task
    assert paused.status == "paused" and 1 <= paused.done < N_PAUSED and paused.failed == 0
    before = {i.idx: (i.completed_at, i.result) for i in await store.list_items(job.id) if i.status == "done"}
    await wait_for(lambda: _engine_idle(engine))  # the cancelled requests left the engine
    assert await runner.run_queued() == []  # a paused job is not picked up

    assert (await runner.resume(job.id)).status == "queued"
    assert await runner.run_queued() == [job.id]
    job = await store.get_job(job.id)
    assert (job.status, job.done, job.failed) == ("done", N_PAUSED, 0)
    items = await store.list_items(job.id)
    assert all(i.result["response"]["body"]["usage"]["completion_tokens"] == 150 for i in items)
    assert len({i.result["response"]["request_id"] for i in items}) == N_PAUSED
    assert {i.idx: (i.completed_at, i.result) for i in items if i.idx in before} == before  # untouched
    assert len(before) == paused.done
    assert len(recorder.priorities) == N_PAUSED + (N_PAUSED - paused.done)  # all at once, then only the ones left pending


async def _done_at_least(store: Store, job_id: int, n: int) -> bool:
    return (await store.get_job(job_id)).done >= n


async def _engine_idle(engine) -> bool:
    stats = engine.stats()
    return not stats.rows and not stats.waiting


async def test_cancel_keeps_results_and_pending_items_never_run(tmp_path, store, make_engine):
    engine = make_engine(max_batch_size=2)
    job = await submit_job(store, batch_file(tmp_path / "reqs.jsonl", MANY, max_tokens=150))
    runner = JobRunner(store, engine)
    task = asyncio.create_task(runner.run_job(job.id))
    await wait_for(lambda: _done_at_least(store, job.id, 1))
    await runner.cancel(job.id)
    job = await task
    assert job.status == "cancelled" and 1 <= job.done < MANY and job.failed == 0
    assert await runner.run_queued() == []
    with pytest.raises(ValueError, match="only a paused or failed job can be resumed"):
        await runner.resume(job.id)
    with pytest.raises(ValueError, match="nothing to cancel"):
        await runner.cancel(job.id)
    out = tmp_path / "out.jsonl"
    assert await asyncio.to_thread(main, ["jobs", "export", str(job.id), "-o", str(out), "--db", store.path]) == 0
    codes = [None if x["error"] is None else x["error"]["code"] for x in map(json.loads, out.read_text().splitlines())]
    assert codes.count(None) == job.done and codes.count("not_run") == MANY - job.done


async def test_a_pause_from_another_connection_stops_the_run(tmp_path, store, make_engine):
    """What `baton jobs pause ID` does while `baton jobs run` works in another process."""
    engine = make_engine(max_batch_size=2)
    job = await submit_job(store, batch_file(tmp_path / "reqs.jsonl", MANY, max_tokens=150))
    runner = JobRunner(store, engine, poll_s=0.05)
    task = asyncio.create_task(runner.run_job(job.id))
    await wait_for(lambda: _done_at_least(store, job.id, 1))
    assert await asyncio.to_thread(main, ["jobs", "pause", str(job.id), "--db", store.path]) == 0
    paused = await asyncio.wait_for(task, 60)
    assert paused.status == "paused" and paused.done < MANY


async def test_engine_shutdown_mid_job_leaves_items_pending_and_the_job_queued(tmp_path, store, make_engine):
    engine = make_engine(max_batch_size=2)
    job = await submit_job(store, batch_file(tmp_path / "reqs.jsonl", MANY, max_tokens=150))
    task = asyncio.create_task(JobRunner(store, engine).run_job(job.id))
    await wait_for(lambda: _done_at_least(store, job.id, 1))
    await asyncio.to_thread(engine.shutdown)
    job = await task
    assert job.status == "queued" and job.failed == 0 and 1 <= job.done < MANY
    with pytest.raises(RuntimeError, match="engine is not running"):
        await JobRunner(store, engine).run_queued()


async def test_progress_reports_counts_rate_and_eta_while_running(tmp_path, store, make_engine):
    engine = make_engine(max_batch_size=1)
    job = await submit_job(store, batch_file(tmp_path / "reqs.jsonl", 4, max_tokens=40, bad_at=0))
    seen = []
    runner = JobRunner(store, engine, on_progress=seen.append, poll_s=0.02)
    await runner.run_job(job.id)
    running = [p for p in seen if p.status == "running"]
    assert running[0].done == 0 and running[0].total == 5
    assert any(p.eta_s is not None and p.eta_s > 0 for p in running)  # after the first item, before the last
    assert all(0 <= p.done <= 4 and p.failed <= 1 and p.pending == 5 - p.done - p.failed for p in seen)
    assert (seen[-1].status, seen[-1].done, seen[-1].failed, seen[-1].eta_s) == ("done", 4, 1, None)
    assert runner.progress(job.id) is None  # not running any more


def pause_after_first_listing(store: Store, barrier: asyncio.Barrier) -> None:
    """Make the store's first `list_jobs()` wait at `barrier` after reading: runners that share the barrier
    have all seen the same queue before any of them goes on to take a job (a race, made deterministic)."""
    original, waited = store.list_jobs, False

    async def list_jobs():
        nonlocal waited
        jobs = await original()
        if not waited:
            waited = True
            await barrier.wait()
        return jobs

    store.list_jobs = list_jobs


async def test_two_runners_racing_for_one_queued_job_run_it_once(tmp_path, engine):
    """Two runners on two connections to one file both see job 1 queued: exactly one claims and runs it (each
    item goes to the engine once), the other skips it."""
    path = tmp_path / "jobs.db"
    async with await Store.open(path) as a, await Store.open(path) as b:
        job = await submit_job(a, batch_file(tmp_path / "reqs.jsonl", 3, max_tokens=4))
        both_looked = asyncio.Barrier(2)
        pause_after_first_listing(a, both_looked)
        pause_after_first_listing(b, both_looked)
        recorder = Recorder(engine)
        ran = await asyncio.gather(JobRunner(a, engine).run_queued(), JobRunner(b, engine).run_queued())
        assert sorted(ran) == [[], [job.id]]
        assert recorder.priorities == [Priority.BATCH] * 3  # every item computed once
        job = await b.get_job(job.id)
        assert (job.status, job.done, job.failed) == ("done", 3, 0)


# ---------------------------------------------------------------------------------------- agent tasks
async def test_agent_task_transcript_chat_and_agent_priority(tmp_path, store, engine):
    path = tmp_path / "task.json"
    path.write_text(json.dumps(AGENT), encoding="utf-8")
    job = await submit_job(store, path)
    chat_id = job.spec["chat_id"]
    recorder = Recorder(engine)
    job = await JobRunner(store, engine).run_job(job.id)
    assert (job.status, job.done, job.total) == ("done", 3, 3)
    assert recorder.priorities == [Priority.AGENT] * 3  # (stats() reporting priorities: test_engine.py)
    chat = await store.get_chat(chat_id)
    assert chat.title == "agent: chain" and chat.system_prompt == "You are terse." and chat.params["max_tokens"] == 12
    messages = await store.list_messages(chat_id)
    assert [m.role for m in messages] == ["system"] + ["user", "assistant"] * 3
    answers = [m.content for m in messages if m.role == "assistant"]
    users = [m.content for m in messages if m.role == "user"]
    assert users[0] == "Name a colour."
    assert users[1] == f"Why {answers[0]}? Keep {{braces}}."
    assert users[2] == f"First: {answers[0]} / then: {answers[1]}"
    assert all(m.finish_reason == "length" and m.completion_tokens == 12 for m in messages if m.role == "assistant")
    results = [i.result for i in await store.list_items(job.id)]
    assert [r["text"] for r in results] == answers and {r["chat_id"] for r in results} == {chat_id}


async def test_agent_resume_reruns_the_interrupted_step_without_duplicate_turns(tmp_path, store, engine):
    path = tmp_path / "task.yaml"
    path.write_text(json.dumps(AGENT), encoding="utf-8")
    job = await submit_job(store, path)
    chat_id = job.spec["chat_id"]
    # What a kill during step 1 leaves: its user message and a streaming assistant message.
    user = await store.add_message(chat_id, "user", "Name a colour.")
    await store.start_assistant_message(chat_id, user.id, "random:tiny", "half an ans")
    job = await JobRunner(store, engine).run_job(job.id)
    assert job.status == "done"
    messages = await store.list_messages(chat_id)
    assert [m.role for m in messages] == ["system"] + ["user", "assistant"] * 3
    assert "half an ans" not in [m.content for m in messages]


async def test_agent_task_paused_mid_step_resumes_with_that_step_rerun(tmp_path, store, make_engine, decode_gate):
    engine = make_engine(max_batch_size=2)
    # step 2's request is held at its first decode step until the pause is sent: it is surely mid-answer
    gate = decode_gate(engine, lambda batch: engine._core.window.counters["num_requests_received"] >= 2)
    path = tmp_path / "task.json"
    steps = [{"prompt": "Name a colour."}, {"prompt": "Go on."}, {"prompt": "Thanks."}]  # random text is long
    path.write_text(json.dumps({**AGENT, "steps": steps, "params": {"temperature": 0, "max_tokens": 250,
                                                                    "ignore_eos": True}}))
    job = await submit_job(store, path)
    chat_id = job.spec["chat_id"]
    runner = JobRunner(store, engine)
    task = asyncio.create_task(runner.run_job(job.id))

    async def step2_streaming() -> bool:
        return len(await store.list_messages(chat_id)) >= 5  # system, user, assistant, user, assistant

    await gate.parked()
    await wait_for(step2_streaming)
    await runner.pause(job.id)
    gate.release()
    paused = await task
    assert (paused.status, paused.done) == ("paused", 1)
    messages = await store.list_messages(chat_id)
    assert len(messages) == 5 and messages[-1].finish_reason == "cancelled"
    await runner.resume(job.id)
    assert await runner.run_queued() == [job.id]
    assert (await store.get_job(job.id)).status == "done"
    messages = await store.list_messages(chat_id)
    assert [m.role for m in messages] == ["system"] + ["user", "assistant"] * 3
    assert all(m.finish_reason == "length" and m.completion_tokens == 250 for m in messages if m.role == "assistant")


async def test_agent_step_naming_an_unknown_output_fails_the_task(store, engine):
    """A job stored without `load_job_file`'s checks: the step fails at run time, later ones are skipped."""
    items = [{"step": 1, "prompt": "hi"}, {"step": 2, "prompt": "use {answer}"}, {"step": 3, "prompt": "more"}]
    job = await store.create_job("agent", "raw", items, {"system": None, "params": {"max_tokens": 4}})
    job = await JobRunner(store, engine).run_job(job.id)
    assert (job.status, job.done, job.failed) == ("failed", 1, 2)
    errors = [i.error for i in await store.list_items(job.id)]
    assert errors[1].startswith("step 2: unknown placeholder {answer}") and errors[2] == "skipped: step 2 failed"
    chats = await store.list_chats()  # a transcript chat was made at run time
    assert [c.title for c in chats] == ["agent: raw"]


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_submit_list_show_pause_resume_cancel(tmp_path, capsys):
    db = str(tmp_path / "cli.db")
    assert main(["jobs", "submit", str(batch_file(tmp_path / "reqs.jsonl", 2, bad_at=0)), "--db", db,
                 "--name", "nightly"]) == 0
    assert capsys.readouterr().out == "1\n"
    task = tmp_path / "task.yml"
    task.write_text(json.dumps(AGENT), encoding="utf-8")
    assert main(["jobs", "submit", str(task), "--db", db]) == 0
    assert capsys.readouterr().out == "2\n"

    assert main(["jobs", "list", "--db", db]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ID", "KIND", "NAME", "STATUS", "DONE/FAILED/TOTAL", "CREATED"]
    assert out[1].split()[:5] == ["2", "agent", "chain", "queued", "0/0/3"]
    assert out[2].split()[:5] == ["1", "batch", "nightly", "queued", "0/0/3"]

    assert main(["jobs", "show", "2", "--db", db]) == 0
    shown = capsys.readouterr().out
    assert "job 2: agent 'chain'" in shown and "chat: 1" in shown and "step 3: pending" in shown

    assert main(["jobs", "pause", "1", "--db", db]) == 0
    assert main(["jobs", "pause", "1", "--db", db]) == 2
    assert "only a queued or running job can be paused" in capsys.readouterr().err
    assert main(["jobs", "resume", "1", "--db", db]) == 0
    assert main(["jobs", "cancel", "2", "--db", db]) == 0
    capsys.readouterr()
    assert main(["jobs", "--db", db]) == 0  # plain `jobs` lists
    assert [x.split()[3] for x in capsys.readouterr().out.splitlines()[1:]] == ["cancelled", "queued"]


def test_cli_submit_stores_a_line_with_a_lone_surrogate_as_one_failed_item(tmp_path, capsys):
    db = str(tmp_path / "cli.db")
    path = tmp_path / "reqs.jsonl"
    path.write_text("\n".join([request("a"), request("b").replace("hello b", "hello \\ud83d"), request("c")]) + "\n",
                    encoding="utf-8")
    assert main(["jobs", "submit", str(path), "--db", db]) == 0
    assert main(["jobs", "run", "--db", db, "--model", "random:tiny"]) == 0
    capsys.readouterr()
    assert main(["jobs", "show", "1", "--db", db]) == 0
    shown = capsys.readouterr().out
    assert "2 done, 1 failed, 0 pending, 3 total" in shown
    assert "failed item 1 (custom_id 'b'): invalid_value: line 2: body.messages[0].content" in shown


def test_nan_and_infinity_fail_only_their_line_in_jobs_and_in_baton_batch_alike(tmp_path, capsys):
    """Before: `jobs submit` refused the whole file (CHECK constraint failed: json_valid(request))."""
    path = tmp_path / "reqs.jsonl"
    lines = [request("a", 2), request("nan", 2).replace('"max_tokens": 2', '"max_tokens": NaN'),
             request("inf", 2).replace('"max_tokens": 2', '"max_tokens": 2, "seed": Infinity'),
             request("big", 2).replace('"max_tokens": 2', '"max_tokens": 2, "top_p": -1e999'), request("b", 2)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    db = str(tmp_path / "cli.db")
    assert main(["jobs", "submit", str(path), "--db", db]) == 0
    assert main(["jobs", "run", "--db", db, "--model", "random:tiny"]) == 0
    assert main(["jobs", "export", "1", "-o", str(tmp_path / "jobs.jsonl"), "--db", db]) == 0
    assert main(["batch", str(path), "-o", str(tmp_path / "batch.jsonl"), "--model", "random:tiny"]) == 0
    capsys.readouterr()
    for out in ("jobs.jsonl", "batch.jsonl"):
        rows = [json.loads(x) for x in (tmp_path / out).read_text(encoding="utf-8").splitlines()]
        assert [r["custom_id"] for r in rows] == ["a", "nan", "inf", "big", "b"]
        assert [r["error"] and r["error"]["code"] for r in rows] == [None] + ["invalid_value"] * 3 + [None], out
        assert [r["error"]["message"] for r in rows[1:4]] == [
            f"line {n}: body.{field}: {value} is not a finite number (JSON has no NaN or Infinity)"
            for n, field, value in [(2, "max_tokens", "nan"), (3, "seed", "inf"), (4, "top_p", "-inf")]]


def test_cli_submit_of_a_file_whose_name_is_not_utf8(tmp_path, capsys):
    db = str(tmp_path / "cli.db")
    assert main(["jobs", "submit", str(batch_file(tmp_path / "req\udcff.jsonl", 1)), "--db", db]) == 0
    capsys.readouterr()
    assert main(["jobs", "list", "--db", db]) == 0
    assert "req\ufffd" in capsys.readouterr().out


def test_cli_run_then_show_and_export(tmp_path, capsys):
    db = str(tmp_path / "cli.db")
    assert main(["jobs", "run", "--db", db, "--model", "random:tiny"]) == 0  # nothing queued: no model load
    assert "no queued jobs" in capsys.readouterr().err
    main(["jobs", "submit", str(batch_file(tmp_path / "reqs.jsonl", 3, bad_at=1)), "--db", db])
    assert main(["jobs", "run", "--db", db, "--model", "random:tiny", "--max-batch-size", "2"]) == 0
    err = capsys.readouterr().err
    assert "job 1 done: 3/4 done, 1 failed" in err and "ran 1 job(s)" in err
    assert main(["jobs", "show", "1", "--db", db]) == 0
    shown = capsys.readouterr().out
    assert "status: done" in shown and "3 done, 1 failed, 0 pending, 4 total" in shown
    assert "failed item 1 (custom_id None): invalid_json_line: line 2" in shown
    out = tmp_path / "out.jsonl"
    assert main(["jobs", "export", "1", "-o", str(out), "--db", db]) == 0
    assert len(out.read_text().splitlines()) == 4 and "(3 ok, 1 failed, 0 not run)" in capsys.readouterr().err


def one_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("baton: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv, message", [
    (["show", "9"], "job 9 does not exist"),
    (["cancel", "9"], "job 9 does not exist"),
    (["export", "9", "-o", "OUT"], "job 9 does not exist"),
    (["submit", "missing.jsonl"], "cannot read the job file"),
    (["run", "--model", "random:nope"], "unknown random preset 'nope'"),
    (["run", "--model", "random:tiny", "--max-batch-size", "0"], "--max-batch-size: must be"),
    (["run", "--model", "random:tiny", "--max-prefill-tokens", "0"], "--max-prefill-tokens: must be"),
])
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    argv = [x.replace("OUT", str(tmp_path / "o.jsonl")) for x in argv]
    db = str(tmp_path / "cli.db")
    if argv[0] == "run":  # so that there is work and the model is loaded
        main(["jobs", "submit", str(batch_file(tmp_path / "r.jsonl", 1)), "--db", db])
        capsys.readouterr()
    assert main(["jobs", *argv, "--db", db]) == 2
    assert message in one_error(capsys.readouterr().err)


def test_cli_bad_job_file_and_agent_export_exit_2(tmp_path, capsys):
    db = str(tmp_path / "cli.db")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [{prompt: 'x {nope}'}]\n", encoding="utf-8")
    assert main(["jobs", "submit", str(bad), "--db", db]) == 2
    assert "step 1: unknown placeholder {nope}" in one_error(capsys.readouterr().err)
    task = tmp_path / "task.json"
    task.write_text(json.dumps(AGENT), encoding="utf-8")
    main(["jobs", "submit", str(task), "--db", db])
    capsys.readouterr()
    assert main(["jobs", "export", "1", "-o", str(tmp_path / "o.jsonl"), "--db", db]) == 2
    assert "agent task, not a batch job: its transcript is chat 1" in one_error(capsys.readouterr().err)


@pytest.mark.parametrize("content", [b"this is not a database at all, just text" * 10,
                                     b"SQLite format 3\x00" + b"\xff" * 200])
def test_cli_unusable_database_exits_2_with_one_line(tmp_path, capsys, content):
    db = tmp_path / "broken.db"
    db.write_bytes(content)
    assert main(["jobs", "list", "--db", str(db)]) == 2
    assert str(db) in one_error(capsys.readouterr().err)
    assert db.read_bytes() == content
