"""A job's results without an engine: items as people read them, the export file (written atomically, the
format of `baton jobs export`), and a batch file with no valid request refused at submission."""

from __future__ import annotations

import asyncio
import json

import pytest

from app.chat.batch_file import success_line
from app.cli.main import main
from app.jobs import OutputFileError, default_export_path, export_job, item_result, load_job_file, submit_job
from app.jobs.batch_job import error_text
from storage import Store

URL = "/v1/chat/completions"


def line(cid: str, text: str = "hi", max_tokens: int = 8) -> str:
    return json.dumps({"custom_id": cid, "method": "POST", "url": URL,
                       "body": {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}})


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "baton.db")
    yield store
    await store.close()


async def finished_batch_job(store, tmp_path):
    """A batch job of 4 lines: one done, one malformed (failed at submission), one failed, one pending."""
    path = tmp_path / "four.jsonl"
    path.write_text("\n".join([line("a", "first?"), "not json", line("c"), line("d")]) + "\n", encoding="utf-8")
    job = await submit_job(store, path)
    items = await store.list_items(job.id)
    await store.complete_item(items[0].id, success_line("a", "r1", "random:tiny", "An answer.\nTwo lines.", "length",
                                                        5, 8))
    await store.fail_item(items[1].id, error_text("invalid_json_line", "line 2: not valid JSON"))
    await store.fail_item(items[2].id, error_text("engine_error", "line 3: generation error: boom"))
    return await store.set_job_status(job.id, "paused")


async def test_item_results_of_a_batch_job(store, tmp_path):
    job = await finished_batch_job(store, tmp_path)
    results = [item_result(job, item) for item in await store.list_items(job.id)]
    assert [(r.idx, r.label, r.status) for r in results] == [
        (0, "a", "done"), (1, "line 2", "failed"), (2, "c", "failed"), (3, "d", "pending")]
    done = results[0]
    assert (done.prompt, done.text, done.tokens, done.finish_reason) == ("first?", "An answer.\nTwo lines.", 8,
                                                                         "length")
    assert done.summary == "done · 8 tokens · length"
    assert results[1].text == "invalid_json_line: line 2: not valid JSON" and results[1].prompt == ""
    assert results[2].text == "engine_error: line 3: generation error: boom" and results[2].tokens is None
    assert (results[3].text, results[3].summary) == ("", "pending")


async def test_item_results_of_an_agent_task(store, tmp_path):
    task = tmp_path / "task.yaml"
    task.write_text("name: t\nsteps:\n  - prompt: Name a colour.\n  - prompt: Why {previous}?\n", encoding="utf-8")
    job = await submit_job(store, task)
    items = await store.list_items(job.id)
    await store.complete_item(items[0].id, {"prompt": "Name a colour.", "text": "Blue.", "finish_reason": "stop",
                                            "prompt_tokens": 4, "completion_tokens": 2})
    job = await store.get_job(job.id)
    first, second = (item_result(job, item) for item in await store.list_items(job.id))
    assert (first.label, first.prompt, first.text, first.tokens, first.finish_reason) == (
        "step 1", "Name a colour.", "Blue.", 2, "stop")
    assert (second.label, second.status, second.prompt) == ("step 2", "pending", "Why {previous}?")


async def test_export_writes_what_baton_jobs_export_writes(store, tmp_path):
    job = await finished_batch_job(store, tmp_path)
    summary = await export_job(store, job.id, tmp_path / "tui.jsonl")
    assert (summary.lines, summary.ok, summary.failed, summary.not_run) == (4, 1, 2, 1)
    assert summary.line() == f"wrote 4 lines to {tmp_path / 'tui.jsonl'} (1 ok, 2 failed, 1 not run)"
    cli = ["jobs", "export", str(job.id), "-o", str(tmp_path / "cli.jsonl"), "--db", str(tmp_path / "baton.db")]
    assert await asyncio.to_thread(main, cli) == 0  # the CLI runs its own event loop

    def read(name):  # an error line gets a fresh id each time it is made
        lines = [json.loads(x) for x in (tmp_path / name).read_text(encoding="utf-8").splitlines()]
        return [{k: v for k, v in x.items() if k != "id" or x["error"] is None} for x in lines]
    assert read("tui.jsonl") == read("cli.jsonl")
    assert [x["custom_id"] for x in read("tui.jsonl")] == ["a", None, "c", "d"]


async def test_export_to_a_folder_that_does_not_exist_leaves_nothing(store, tmp_path):
    job = await finished_batch_job(store, tmp_path)
    with pytest.raises(OutputFileError, match="cannot write the output file .*No such file or directory"):
        await export_job(store, job.id, tmp_path / "nope" / "out.jsonl")
    with pytest.raises(OutputFileError, match="it is a directory"):
        await export_job(store, job.id, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baton.db", "baton.db-shm", "baton.db-wal", "four.jsonl"]


async def test_default_export_path_names_the_job(store, tmp_path):
    job = await finished_batch_job(store, tmp_path)
    assert default_export_path(tmp_path, job) == tmp_path / f"job-{job.id}-four.results.jsonl"


@pytest.mark.parametrize("content, message", [
    ("not json\n", "no line is a valid request (1 line; line 1: not valid JSON"),
    ('{"custom_id": "x"}\n[1]\n', "no line is a valid request (2 lines; line 1: method must be 'POST'"),
])
def test_a_batch_file_without_a_valid_request_is_refused(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        load_job_file(path)
    assert str(caught.value).startswith(f"{path}: {message}") and "\n" not in str(caught.value)
