"""Background jobs in the TUI: the app runs the job queue while it is open; the jobs screen (F9) shows every
job with a progress bar (tokens counted, a readable ETA), submits a file whose path is typed (with
completion) or picked, pauses / resumes / cancels, shows a job's results and exports them, and opens an agent
task's transcript; the live panel labels job rows. Pilot drives `BatonApp` on `random:tiny` with a real
SQLite file; where a job must be caught mid-item, the engine is parked with `DecodeGate` (no timing)."""

from __future__ import annotations

import asyncio
import json

import pytest
from textual.widgets import DataTable, ProgressBar, TextArea

from app.jobs import JobProgress, export_lines, submit_job
from app.tui.screens.confirm import ConfirmScreen
from app.tui.screens.help import JOB_KEYS, HelpScreen, binding_rows
from app.tui.screens.job_file_picker import JobFilePicker, JobFileTree
from app.tui.screens.job_results import JobResultsScreen
from app.tui.screens.jobs import JobsScreen, job_cells
from app.tui.screens.path_prompt import PathPromptScreen
from app.tui.widgets.job_bar import JobBar, progress_text
from app.tui.widgets.path_input import PathInput
from app.tui import BatonApp
from app.tui.widgets.live_panel import LivePanel
from storage import Store
from tui_support import SIZE, config_dir, ready, record_notifications, wait_for  # noqa: F401 (config_dir: autouse fixture)

URL = "/v1/chat/completions"
LONG = 1500  # tokens per item (ignore_eos)
MANY = 400  # items in a job that must still be running when the test acts on it: minutes of work on any CPU


@pytest.fixture
def engine(make_engine):
    return make_engine(max_batch_size=4)


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "baton.db")
    yield store
    await store.close()


def batch_file(path, n: int, max_tokens: int = 8):
    lines = [json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": URL,
                         "body": {"messages": [{"role": "user", "content": f"hello {i}"}],
                                  "max_tokens": max_tokens, "ignore_eos": True}}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def open_jobs(pilot) -> JobsScreen:
    await pilot.press("f9")
    screen = await wait_for(pilot, lambda: isinstance(pilot.app.screen, JobsScreen) and pilot.app.screen,
                            what="the jobs screen")
    await wait_for(pilot, lambda: screen.query_one("#jobs-table", DataTable).row_count == len(screen.jobs)
                   and screen.jobs, what="the jobs table")
    return screen


async def stored_status(store, job_id: int) -> str:
    return (await store.get_job(job_id)).status


async def wait_status(pilot, store, job_id: int, status: str, timeout: float = 120.0) -> None:
    last = None
    for _ in range(int(timeout / 0.05)):
        last = await stored_status(store, job_id)
        if last == status:
            return
        await pilot.pause(0.05)
    raise AssertionError(f"job {job_id} stayed {last}, expected {status}")


async def test_a_submitted_batch_job_runs_to_done_while_the_tui_is_open(engine, store, tmp_path):
    job = await submit_job(store, batch_file(tmp_path / "small.jsonl", 3))
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = await open_jobs(pilot)
        await wait_status(pilot, store, job.id, "done")
        table = screen.query_one("#jobs-table", DataTable)
        await wait_for(pilot, lambda: str(table.get_cell(str(job.id), "status")) == "done", what="done shown")
        assert str(table.get_cell(str(job.id), "items")) == "3/0/3"
        await wait_for(pilot, lambda: screen.bars[job.id].bar.percentage == 1, what="a full progress bar")
        items = await store.list_items(job.id)
        assert [i.status for i in items] == ["done"] * 3


async def test_pause_resume_and_cancel_change_the_stored_status(engine, store, tmp_path):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("f9")
        screen = await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen, what="jobs")
        long = await submit_job(store, batch_file(tmp_path / "long.jsonl", MANY, max_tokens=LONG))
        await wait_status(pilot, store, long.id, "running")
        await wait_for(pilot, lambda: long.id in screen.jobs, what="the job listed")
        screen.select_job(long.id)
        await pilot.press("p")
        await wait_status(pilot, store, long.id, "paused")
        await wait_for(pilot, lambda: str(screen.query_one(DataTable).get_cell(str(long.id), "status")) == "paused",
                       what="paused shown")
        assert (await store.get_job(long.id)).pending > 0
        screen.select_job(long.id)
        await pilot.press("r")
        await wait_status(pilot, store, long.id, "running")  # the runner picks it up again
        screen.select_job(long.id)
        await pilot.press("x")
        confirm = await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen, what="confirm")
        confirm.action_confirm()
        await wait_status(pilot, store, long.id, "cancelled")
        screen.select_job(long.id)
        notes = record_notifications(app)
        await pilot.press("p")  # a cancelled job cannot be paused: a warning, nothing changes
        await wait_for(pilot, lambda: any(sev == "warning" and "is cancelled" in msg for sev, _, msg in notes),
                       what="the warning")
        assert await stored_status(store, long.id) == "cancelled"
        assert (await store.get_job(long.id)).pending > 0


async def test_an_agent_task_transcript_opens_as_a_chat(engine, store, tmp_path):
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"name": "colours", "params": {"temperature": 0, "max_tokens": 6, "ignore_eos": True},
                                "steps": [{"prompt": "Name a colour."}, {"prompt": "Why {previous}?"}]}))
    job = await submit_job(store, task)
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(pilot)
        screen = await open_jobs(pilot)
        await wait_status(pilot, store, job.id, "done")
        screen.select_job(job.id)
        screen.query_one(DataTable).focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is chat, what="back on the chat screen")
        await wait_for(pilot, lambda: chat.pane.chat is not None and chat.pane.chat.id == job.spec["chat_id"],
                       what="the transcript chat")


async def test_the_live_panel_labels_job_rows_with_batch_priority(engine, store, tmp_path):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        chat = await ready(pilot)
        await pilot.press("ctrl+b")
        panel = await wait_for(pilot, lambda: chat.query(LivePanel).first() if chat.query(LivePanel) else None,
                               what="the live panel")
        job = await submit_job(store, batch_file(tmp_path / "long.jsonl", MANY, max_tokens=LONG))
        table = panel.query_one("#rows", DataTable)

        def job_rows():
            panel.refresh_now()
            return [key for key in table.rows if str(table.get_cell(key, "request")).startswith("job: long #")]

        rows = await wait_for(pilot, job_rows, what="job rows in the panel")
        assert {str(table.get_cell(k, "priority")) for k in rows} == {"batch"}
        assert {str(table.get_cell(k, "kind")) for k in rows} == {"job"}
    # quitting stops the runner cleanly: the job goes back to the queue, its finished items kept
    job = await store.get_job(job.id)
    assert job.status == "queued" and job.pending > 0


async def test_a_refresh_of_the_jobs_screen_never_cancels_a_status_change(engine, store, tmp_path):
    """The screen's periodic and progress-driven refresh was an exclusive worker in the same group as the
    user's pause / resume / cancel, so a refresh landing while a change was in flight cancelled the change
    (seen as a job that "stayed running" after X and confirm)."""
    import asyncio

    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        job = await submit_job(store, batch_file(tmp_path / "long.jsonl", MANY, max_tokens=LONG))
        screen = await open_jobs(pilot)
        await wait_status(pilot, store, job.id, "running")
        release = asyncio.Event()
        real_cancel = screen.runner.cancel

        async def held_cancel(job_id):
            await release.wait()  # the change is in flight ...
            return await real_cancel(job_id)

        screen.runner.cancel = held_cancel
        screen.cancel(job.id)
        await pilot.pause()
        screen.reload()  # ... when a refresh starts
        await pilot.pause()
        release.set()
        await wait_status(pilot, store, job.id, "cancelled")


# ------------------------------------------------------------------------------------ issue #10.6
SMALL = (80, 24)


async def stored_job(store, tmp_path, name: str, n: int, done: int, failed: int, status: str):
    """A batch job stored with `done` items done and `failed` failed, left with `status` (nothing runs it)."""
    job = await submit_job(store, batch_file(tmp_path / f"{name}.jsonl", n))
    items = await store.list_items(job.id)
    for item in items[:done]:
        await store.complete_item(item.id, {"custom_id": item.custom_id, "error": None, "response": None})
    for item in items[done:done + failed]:
        await store.fail_item(item.id, "engine_error: boom")
    return await store.set_job_status(job.id, status)


async def test_finished_jobs_show_full_bars_after_a_restart_and_every_refresh(engine, store, tmp_path):
    """The bars were rebuilt at every refresh (the table's row keys are strings, compared with int job ids),
    and a new bar was updated before it was in the DOM, so it showed 0% whatever the job's state."""
    done = await stored_job(store, tmp_path, "five", 5, 5, 0, "done")
    failed = await stored_job(store, tmp_path, "broke", 4, 1, 3, "failed")
    cancelled = await stored_job(store, tmp_path, "stopped", 5, 2, 0, "cancelled")
    paused = await stored_job(store, tmp_path, "later", 4, 1, 0, "paused")
    app = BatonApp(engine=engine, store=store)  # a new app on a store with finished jobs: the restart
    async with app.run_test(size=SMALL) as pilot:
        await ready(pilot)
        screen = await open_jobs(pilot)
        for _ in range(3):  # what the screen does every second
            await screen._reload()
            await pilot.pause()
        # one bar per job (rebuilt only when jobs come or go), each showing the job's finished share
        assert sorted(bar.percentage for bar in screen.query(ProgressBar)) == [0.25, 0.4, 1.0, 1.0]
        bars = list(screen.query(JobBar))
        shown = {bar.progress.job_id: (bar.bar.percentage, str(bar.query_one(".job-progress").content))
                 for bar in bars}
        assert shown == {done.id: (1.0, "100% · done"), failed.id: (1.0, "100% · failed"),
                         cancelled.id: (0.4, "40% · cancelled"), paused.id: (0.25, "25% · paused")}
        assert all(bar.region.height == 1 and bar.region.right <= SMALL[0] for bar in bars)  # seen at 80x24
        assert str(screen.query_one("#jobs-table", DataTable).get_cell(str(done.id), "items")) == "5/0/5"


def test_the_eta_reads_in_minutes_and_seconds_and_is_a_dash_when_unknown(tmp_path):
    from storage import Job

    job = Job(3, "batch", "j", "running", None, {}, 10, 2, 0, None, None)
    running = JobProgress(3, "running", 2, 0, 10, tokens_per_s=12.34, eta_s=80.2, partial=0.5)
    cells = [str(c) for c in job_cells(job, running)]
    assert cells[-2:] == ["12.3", "1m 20s"]
    assert progress_text(running) == "25% · ETA 1m 20s"
    unknown = JobProgress(3, "running", 2, 0, 10)
    assert [str(c) for c in job_cells(job, unknown)][-1] == "—" and progress_text(unknown) == "20%"
    paused = JobProgress(3, "paused", 2, 0, 10, eta_s=80)
    assert [str(c) for c in job_cells(job, paused)][-2:] == ["—", "—"] and progress_text(paused) == "20% · paused"


async def test_the_bar_and_eta_move_while_long_items_generate(engine, store, tmp_path, decode_gate, monkeypatch):
    """Progress counted whole items only: a job of long items sat at 0% with no ETA until one finished."""
    shown: list[float] = []
    real_show = JobBar.show

    def show(bar, progress):
        shown.append(progress.fraction)
        real_show(bar, progress)
    monkeypatch.setattr(JobBar, "show", show)
    gate = decode_gate(engine, skip=16)  # park after 16 decode steps: each item has ~17 of its 48 tokens
    job = await submit_job(store, batch_file(tmp_path / "long.jsonl", 2, max_tokens=48))
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SMALL) as pilot:
        await ready(pilot)
        screen = await open_jobs(pilot)
        await gate.parked()
        table = screen.query_one("#jobs-table", DataTable)

        def moving():
            p = screen.progress_of(screen.jobs[job.id])
            return (p.status == "running" and p.done == 0 and p.partial > 0 and screen.bars[job.id].bar.percentage > 0
                    and str(table.get_cell(str(job.id), "eta")) != "—")
        await wait_for(pilot, moving, timeout=60, what="the bar and the ETA to move before any item finished")
        assert (await store.get_job(job.id)).done == 0
        assert 0 < screen.live[job.id].fraction < 1
        assert "ETA" in str(screen.bars[job.id].query_one(".job-progress").content)
        gate.release()
        await wait_status(pilot, store, job.id, "done", timeout=120)  # a busy 2-core machine: minutes, not s
        await wait_for(pilot, lambda: screen.bars[job.id].bar.percentage == 1, what="a full bar")
    assert shown == sorted(shown), "the progress went backwards"
    assert shown[-1] == 1.0 and all(0 <= f <= 1 for f in shown)


async def type_text(pilot, text: str) -> None:
    await pilot.press(*text)


async def test_type_a_path_with_completion_and_bad_files_are_reported_in_the_dialog(engine, store, tmp_path,
                                                                                    monkeypatch):
    folder = tmp_path / "jobs"
    folder.mkdir()
    batch_file(folder / "good.jsonl", 2)
    (folder / "bad.jsonl").write_text("not json\n", encoding="utf-8")
    (folder / "empty.jsonl").write_text("", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SMALL) as pilot:
        await ready(pilot)
        await pilot.press("f9")
        screen = await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen, what="jobs")
        await pilot.press("s")
        picker = await wait_for(pilot, lambda: isinstance(app.screen, JobFilePicker) and app.screen, what="picker")
        path_input = picker.query_one(PathInput)
        assert path_input.has_focus and path_input.value == f"{tmp_path}/"
        tree = picker.query_one(JobFileTree)
        assert tree.region.height >= 3 and path_input.region.bottom <= SMALL[1]  # both seen at 80x24
        await type_text(pilot, "jo")
        await wait_for(pilot, lambda: path_input._suggestion, what="a completion")
        await pilot.press("tab")  # completes the folder ...
        assert path_input.value == f"{folder}/"
        await wait_for(pilot, lambda: tree.path == folder, what="the tree to follow the typed folder")
        await type_text(pilot, "ba")
        await wait_for(pilot, lambda: path_input._suggestion, what="a completion")
        await pilot.press("right")  # ... and the file, with → as well
        assert path_input.value == str(folder / "bad.jsonl")
        await pilot.press("enter")
        await wait_for(pilot, lambda: picker.error, what="the error in the dialog")
        assert "no line is a valid request" in picker.error and "bad.jsonl" in picker.error
        assert app.screen is picker and path_input.value == str(folder / "bad.jsonl")  # nothing typed is lost
        for typed, message in (("empty.jsonl", "no requests"), ("missing.jsonl", "No such file")):
            await pilot.press("ctrl+w", "ctrl+w")  # back to the folder
            await type_text(pilot, typed)
            await pilot.press("enter")
            await wait_for(pilot, lambda: picker.error and message in picker.error, what=f"the error for {typed}")
            assert app.screen is picker and path_input.value == str(folder / typed)
        assert await store.list_jobs() == []
        await pilot.press("ctrl+w", "ctrl+w")
        await type_text(pilot, "go")
        await wait_for(pilot, lambda: path_input._suggestion, what="a completion")
        await pilot.press("tab", "enter")
        await wait_for(pilot, lambda: app.screen is screen, what="the picker to close")
        (job,) = await store.list_jobs()
        assert (job.name, job.total) == ("good", 2)
        await wait_for(pilot, lambda: job.id in screen.jobs, what="the job listed")
        await pilot.press("s")  # the picker opens where the last file was
        picker = await wait_for(pilot, lambda: isinstance(app.screen, JobFilePicker) and app.screen, what="picker")
        assert picker.query_one(PathInput).value == f"{folder}/"
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, what="the picker to close")
        assert len(await store.list_jobs()) == 1


async def test_pick_a_file_in_the_tree(engine, store, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    batch_file(work / "good.jsonl", 2)
    (work / "notes.txt").write_text("not a job file\n", encoding="utf-8")
    monkeypatch.chdir(work)
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("f9")
        screen = await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen, what="jobs")
        await pilot.press("s")
        picker = await wait_for(pilot, lambda: isinstance(app.screen, JobFilePicker) and app.screen, what="picker")
        tree = picker.query_one(JobFileTree)
        await wait_for(pilot, lambda: tree.root.children, what="the tree")
        assert {node.data.path.name for node in tree.root.children} == {"good.jsonl"}  # not baton.db
        await pilot.press("down")  # from the path to the tree
        assert tree.has_focus
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: app.screen is screen, what="the picker to close")
        (job,) = await store.list_jobs()
        assert job.source_path == str(work / "good.jsonl")


async def test_view_a_jobs_results_and_export_them(engine, store, tmp_path, monkeypatch):
    path = batch_file(tmp_path / "three.jsonl", 3)
    with path.open("a", encoding="utf-8") as f:
        f.write("not json\n")
    job = await submit_job(store, path)
    monkeypatch.chdir(tmp_path)
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SMALL) as pilot:
        await ready(pilot)
        screen = await open_jobs(pilot)
        await wait_status(pilot, store, job.id, "done")
        screen.select_job(job.id)
        await pilot.press("v")
        results = await wait_for(pilot, lambda: isinstance(app.screen, JobResultsScreen) and app.screen,
                                 what="the results")
        await wait_for(pilot, lambda: len(results.results) == 4, what="the items listed")
        table = results.query_one("#results-table", DataTable)
        assert [str(table.get_cell(str(i), "status")) for i in range(4)] == ["done", "done", "done", "failed"]
        stored = await store.list_items(job.id)
        first = stored[0].result["response"]["body"]["choices"][0]["message"]["content"]
        text = results.query_one("#result-text", TextArea)
        assert text.read_only and text.text.splitlines() == f"› hello 0\n\n{first}".splitlines()
        assert table.region.height >= 4 and text.region.height >= 3 and text.region.bottom <= SMALL[1]
        await pilot.press("down", "down", "down")  # the last row: the malformed line
        await wait_for(pilot, lambda: "invalid_json_line" in text.text, what="the failed item's error")
        await pilot.press("e")
        prompt = await wait_for(pilot, lambda: isinstance(app.screen, PathPromptScreen) and app.screen,
                                what="the export dialog")
        path_input = prompt.query_one(PathInput)
        assert path_input.value == str(tmp_path / f"job-{job.id}-three.results.jsonl")
        await pilot.press("ctrl+u")
        await type_text(pilot, "nowhere/out.jsonl")
        await pilot.press("enter")
        await wait_for(pilot, lambda: prompt.error, what="the error in the dialog")
        assert "cannot write the output file" in prompt.error and app.screen is prompt
        await pilot.press("ctrl+u")
        (tmp_path / "exports").mkdir()
        await type_text(pilot, "exports/out.jsonl")
        notes = record_notifications(app)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is results, what="the dialog to close")
        await wait_for(pilot, lambda: notes, what="the notification")
        out = tmp_path / "exports" / "out.jsonl"
        assert notes[-1][2] == f"wrote 4 lines to {out} (3 ok, 1 failed, 0 not run)"
        written = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
        expected = await export_lines(store, job.id)
        assert written[:3] == expected[:3]  # done lines as stored; the error line's id is new each time
        assert {**written[3], "id": None} == {**expected[3], "id": None}
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, what="back on the jobs screen")
        await pilot.press("e")  # the jobs screen exports too, suggesting the folder used last
        prompt = await wait_for(pilot, lambda: isinstance(app.screen, PathPromptScreen) and app.screen,
                                what="the export dialog")
        assert prompt.query_one(PathInput).value == str(tmp_path / "exports" / f"job-{job.id}-three.results.jsonl")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, what="back on the jobs screen")


async def test_the_new_keys_are_in_the_footer_and_the_help(engine, store, tmp_path):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SMALL) as pilot:
        await ready(pilot)
        await pilot.press("f9")
        screen = await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen, what="jobs")
        from textual.widgets._footer import FooterKey

        footer = {}
        await wait_for(pilot, lambda: footer.update({k.key: k for k in screen.query(FooterKey)}) or
                       {"v", "e"} <= set(footer), what="the footer's keys")
        limit = footer["ctrl+p"].region.x  # the command palette key, docked right
        for key, description in (("s", "Submit"), ("v", "View"), ("e", "Export")):  # whole, at 80 columns
            assert footer[key].description == description
            assert 0 < footer[key].region.width and footer[key].region.right <= limit
        await pilot.press("f1")
        help_screen = await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen) and app.screen, what="help")
        keys = [k for k, _ in help_screen.rows()]
        assert {"V", "E", "Enter", "F1"} <= set(keys)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, what="back")
    chat_help = {k for keys, _ in JOB_KEYS for k in keys.split(" / ")}  # the chat screen's help lists them all
    assert {k for keys, _ in binding_rows(JobsScreen.BINDINGS) for k in keys.split(" / ")} <= chat_help
