"""A job survives a SIGKILL: `baton jobs run` is killed mid-job in a subprocess, and a new run finishes it
with every item done exactly once (items finished before the kill are never run or written again)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from app.jobs import JobRunner, submit_job
from backend import Priority
from storage import Store

REPO = Path(__file__).resolve().parents[1]
ITEMS, MAX_TOKENS = 12, 400


def write_batch(path: Path) -> Path:
    lines = [json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"messages": [{"role": "user", "content": f"count to {i}"}],
                                  "max_tokens": MAX_TOKENS, "ignore_eos": True}}) for i in range(ITEMS)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def done_items(db: Path) -> dict[int, tuple[str, str]]:
    return {idx: (completed_at, result) for idx, completed_at, result in
            read(db, "SELECT idx, completed_at, result FROM job_item WHERE status = 'done'")}


def test_killed_run_resumes_and_finishes_every_item_exactly_once(tmp_path, make_engine):
    db = tmp_path / "jobs.db"

    async def submit() -> int:
        async with await Store.open(db) as store:
            return (await submit_job(store, write_batch(tmp_path / "reqs.jsonl"))).id

    job_id = asyncio.run(submit())
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "jobs", "run", "--db", str(db), "--model", "random:tiny",
         "--max-batch-size", "1"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 180  # a slow machine takes a while to import torch and transformers
        while len(done_items(db)) < 2:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = done_items(db)
    assert 2 <= len(before) < ITEMS, "the kill came too late to test a resume"
    assert read(db, f"SELECT status FROM job WHERE id = {job_id}") == [("running",)]

    engine = make_engine(max_batch_size=4)
    submitted: list[Priority] = []
    generate = engine.generate

    def counting(prompt, params=None, priority=Priority.INTERACTIVE, request_id=None):
        submitted.append(priority)
        return generate(prompt, params, priority=priority, request_id=request_id)

    engine.generate = counting

    async def resume() -> None:
        async with await Store.open(db) as store:
            assert store.recovered_jobs == 1  # 'running' with nobody running it -> queued again
            assert await JobRunner(store, engine).run_queued() == [job_id]

    asyncio.run(resume())
    assert len(submitted) == ITEMS - len(before)  # only the items not done at the kill ran again
    after = done_items(db)
    assert sorted(after) == list(range(ITEMS))
    assert {idx: after[idx] for idx in before} == before  # finished items untouched: same time, same result
    results = [json.loads(r) for _, r in after.values()]
    assert all(r["response"]["body"]["usage"]["completion_tokens"] == MAX_TOKENS for r in results)
    assert len({r["response"]["request_id"] for r in results}) == ITEMS
    assert read(db, f"SELECT status FROM job WHERE id = {job_id}") == [("done",)]
    assert read(db, "SELECT count(*) FROM job_item WHERE status != 'done'") == [(0,)]
