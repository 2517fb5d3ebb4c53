"""Soak run: chats through the TUI's session code and a batch job in another process that is SIGKILLed and
resumed, all on one SQLite file; then proves with SQL that nothing was lost or duplicated.

    python -m benchmarks.soak [--minutes 10] [--model smollm2-135m-instruct] [--sessions 16] [--items 500]
    python -m benchmarks.soak --smoke          # random:tiny, 4 sessions, 40 items, 0.5 minute

What runs, in a fresh temp folder holding the one database:
- `--sessions` chat sessions, each a loop of chats of `--turns` turns, driven through
  `app.tui.sessions.Sessions` (an asyncio `launch`, a `post` that records the facts it is told) on an engine in
  this process: send, wait for the answer to finish, think a moment, send again. A share of the answers
  (`--cancel-rate`) is stopped with `Sessions.stop` after a random number of tokens (mid-stream).
- a batch job of `--items` OpenAI Batch lines submitted with `app.jobs.submit_job` and run by
  `baton jobs run` in a separate process on the same file. When a share of the items is finished (by items,
  not seconds: kill k of `--kills` comes at k / (kills + 1) of them) it is killed with SIGKILL and started
  again, so it must resume.
- every second, the RSS of this process and of the job runner (psutil).
Chats go on for `--minutes`, and longer if the job is not finished by then (up to a hard limit).

Checks, with SQL against the store at the end:
- per chat: every user turn stored once (its text is unique), every answer that streamed a token stored once
  (one assistant message with the turn's user message as parent) with the finish reason, the token count and
  the text the session saw; no stray message. Lost = expected and not found, duplicated = found more than once.
- job: 500 items, each done exactly once: one row per index, distinct custom ids, distinct request ids among
  the results, each result's custom id its item's, items done before a kill unchanged after it (same time,
  same result), none pending or failed, the job `done`.
Reports those counts, the SIGKILLs and resumes, an RSS summary per process (growth after warm-up against a
stated tolerance), and the chats' TTFT (from `Sessions.send` to the first token) and ITL percentiles (ms);
writes `<out-dir>/<date>-<device>-soak.json` (`-soak-smoke.json` for `--smoke`). Exit status 1 when anything
was lost, duplicated, failed or left unfinished.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20

QUESTIONS = [
    "What is a good way to start learning to draw?",
    "Explain what a hash table is in two sentences.",
    "Give me three ideas for a rainy Sunday.",
    "How do I keep basil alive on a windowsill?",
    "Why is the sky blue?",
    "Write a haiku about a train station.",
    "What should I pack for a weekend hike?",
    "Summarise the plot of Hamlet briefly.",
    "How does compound interest work?",
    "Suggest a name for a grey cat.",
    "What is the difference between a list and a tuple in Python?",
    "How can I sleep better?",
    "Tell me a fun fact about octopuses.",
    "What are the main causes of inflation?",
    "Describe a sunset to someone who has never seen one.",
    "How do vaccines work?",
    "Give me a quick recipe with eggs and spinach.",
    "What makes a good password?",
    "Why do leaves change colour in autumn?",
    "Explain recursion to a ten-year-old.",
]
FOLLOW_UPS = ["Can you say more?", "Make it shorter.", "Give an example.", "Why?", "And what else?",
              "Explain that differently.", "Thanks. One more tip?", "Is that always true?"]
TOPICS = ["the moon", "bread", "rivers", "chess", "glass", "bees", "maps", "clocks", "salt", "bridges",
          "paper", "wind", "violins", "coffee", "snow", "lighthouses"]


# ------------------------------------------------------------------------------------------- records
@dataclass
class Turn:
    """One chat turn as the session driver saw it (what is expected in the store)."""

    session: int
    chat_id: int
    index: int
    text: str
    stop_after: int | None  # stop it after this many tokens (None: let it finish)
    t_send: float = 0.0
    user_message_id: int | None = None
    request_id: str | None = None
    stopped: bool = False  # Sessions.stop was called mid-stream
    token_times: list[float] = field(default_factory=list)
    engine_text: list[str] = field(default_factory=list)  # every output's text, as the engine sent it
    engine_finish: str | None = None  # the last output's finish reason
    streamed: list[str] = field(default_factory=list)  # TokensStreamed texts (what the screen showed)
    posted_finish: str | None = None
    posted_message_id: int | None = None
    error: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    got_tokens: asyncio.Event = field(default_factory=asyncio.Event)


class Facts:
    """The `post` sink: records what `Sessions` says, per chat's turn in flight."""

    def __init__(self) -> None:
        self.current: dict[int, Turn] = {}  # chat id -> its turn in flight
        self.by_request: dict[str, Turn] = {}
        self.kinds: Counter[str] = Counter()
        self.orphans: list[str] = []  # facts about no known turn

    def post(self, message: Any) -> None:
        from app.tui import messages as m

        self.kinds[type(message).__name__] += 1
        chat_id = getattr(message, "chat_id", None)
        turn = self.current.get(chat_id)
        if isinstance(message, m.ChatChanged):
            return
        if turn is None:
            self.orphans.append(f"{type(message).__name__} for chat {chat_id}")
            return
        if isinstance(message, m.UserMessageStored):
            turn.user_message_id = message.message.id
        elif isinstance(message, m.GenerationStarted):
            turn.request_id = message.request_id
            self.by_request[message.request_id] = turn
        elif isinstance(message, m.TokensStreamed):
            turn.streamed.append(message.text)
        elif isinstance(message, (m.GenerationFinished, m.GenerationFailed)):
            turn.posted_finish = message.finish_reason if isinstance(message, m.GenerationFinished) else "error"
            turn.posted_message_id = None if message.message is None else message.message.id
            if isinstance(message, m.GenerationFailed):
                turn.error = message.error
            turn.done.set()
            turn.got_tokens.set()


class TimedEngine:
    """The engine as `Sessions` sees it, stamping every token output of a request as it reaches the loop."""

    def __init__(self, engine: Any, facts: Facts) -> None:
        self._engine, self._facts = engine, facts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def generate(self, prompt: Any, params: Any = None, priority: Any = None, request_id: str | None = None):
        turn = self._facts.by_request.get(request_id)
        stream = self._engine.generate(prompt, params, priority, request_id=request_id)
        async with contextlib.aclosing(stream):
            async for out in stream:
                if turn is not None:
                    if out.token_id is not None:
                        turn.token_times.append(time.perf_counter())
                        if turn.stop_after is not None and len(turn.token_times) >= turn.stop_after:
                            turn.got_tokens.set()
                    turn.engine_text.append(out.text)
                    if out.finished:
                        turn.engine_finish = out.finish_reason
                yield out


# ----------------------------------------------------------------------------------------- job runner
class JobDriver(threading.Thread):
    """Runs `baton jobs run` in a subprocess, SIGKILLs it at item thresholds and starts it again, until the
    job is finished (or `hard_deadline`). Watches the store with its own read-only SQLite connection."""

    def __init__(self, db: Path, job_id: int, items: int, kills: int, cmd: list[str], env: dict[str, str],
                 log_dir: Path, hard_deadline: float, t0: float) -> None:
        super().__init__(name="soak-job-driver", daemon=True)
        self.db, self.job_id, self.items, self.cmd, self.env, self.log_dir = db, job_id, items, cmd, env, log_dir
        self.hard_deadline, self.t0 = hard_deadline, t0
        self.thresholds = [math.ceil(items * k / (kills + 1)) for k in range(1, kills + 1)]
        self.pid: int | None = None
        self.events: list[dict] = []  # starts, kills, exits
        self.done_at_kill: list[dict[int, tuple]] = []
        self.seen_interrupted: set[int] = set()  # assistant message ids seen 'interrupted' during the run
        self.problems: list[str] = []
        self.finished_at: float | None = None
        self.stop = threading.Event()

    def _query(self, conn: sqlite3.Connection, sql: str, args: tuple = ()) -> list[tuple]:
        for _ in range(50):
            try:
                return conn.execute(sql, args).fetchall()
            except sqlite3.OperationalError:  # busy: try again
                time.sleep(0.01)
        return conn.execute(sql, args).fetchall()

    def _finished(self, conn: sqlite3.Connection) -> int:
        return self._query(conn, "SELECT count(*) FROM job_item WHERE job_id = ? AND status != 'pending'",
                           (self.job_id,))[0][0]

    def _event(self, kind: str, **extra: Any) -> None:
        self.events.append({"t_s": round(time.perf_counter() - self.t0, 3), "event": kind, **extra})

    def run(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5, check_same_thread=False)
        try:
            self._drive(conn)
        except Exception as exc:  # reported, never silent
            self.problems.append(f"job driver failed: {exc!r}")
        finally:
            conn.close()
            self.pid = None
            self.finished_at = time.perf_counter()

    def _drive(self, conn: sqlite3.Connection) -> None:
        starts = unplanned = 0
        while True:
            log_path = self.log_dir / f"runner-{starts}.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=self.env)
            starts += 1
            self.pid = proc.pid
            self._event("start", pid=proc.pid, finished_items=self._finished(conn), log=log_path.name)
            killed = False
            last_look = 0.0
            while proc.poll() is None:
                finished = self._finished(conn)
                if time.perf_counter() - last_look > 0.2:  # answers another process marked interrupted
                    last_look = time.perf_counter()
                    self.seen_interrupted.update(r[0] for r in self._query(
                        conn, "SELECT id FROM message WHERE finish_reason = 'interrupted'"))
                if self.thresholds and finished >= self.thresholds[0]:
                    threshold = self.thresholds.pop(0)
                    if finished >= self.items:  # too late to kill mid-job: say so, do not pretend
                        self.problems.append(f"kill at {threshold} items missed: the job had finished")
                        continue
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()  # reap it, so its pid is dead for the store's recovery
                    done = {idx: (at, result) for idx, at, result in self._query(
                        conn, "SELECT idx, completed_at, result FROM job_item WHERE job_id = ? AND status = 'done'",
                        (self.job_id,))}
                    self.done_at_kill.append(done)
                    self._event("sigkill", pid=proc.pid, threshold=threshold, finished_seen=finished,
                                finished_at_kill=self._finished(conn), done_at_kill=len(done),
                                job_status=self._query(conn, "SELECT status FROM job WHERE id = ?",
                                                       (self.job_id,))[0][0])
                    killed = True
                    break
                if time.perf_counter() > self.hard_deadline or self.stop.is_set():
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    self._event("gave_up", pid=proc.pid, finished_items=finished)
                    self.problems.append(f"the job was not finished by the hard limit ({finished} of {self.items})"
                                         if not self.stop.is_set() else "the soak stopped before the job finished")
                    return
                self.stop.wait(0.02)
            if killed:
                continue
            status = self._query(conn, "SELECT status FROM job WHERE id = ?", (self.job_id,))[0][0]
            self._event("exit", pid=proc.pid, returncode=proc.returncode, job_status=status,
                        finished_items=self._finished(conn))
            if proc.returncode == 0 and status == "done":
                return
            unplanned += 1
            self.problems.append(f"the job runner exited with status {proc.returncode} and the job {status} "
                                 f"(see {log_path.name})")
            if unplanned >= 3 or time.perf_counter() > self.hard_deadline:
                return


class RssSampler(threading.Thread):
    """Every `interval_s`: this process's RSS and the job runner's (whatever process runs it now)."""

    def __init__(self, driver: JobDriver, t0: float, interval_s: float = 1.0) -> None:
        super().__init__(name="soak-rss", daemon=True)
        self.driver, self.t0, self.interval_s = driver, t0, interval_s
        self.samples: list[tuple[float, int, int | None, int | None]] = []  # t, own rss, runner pid, its rss
        self.stop = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        procs: dict[int, psutil.Process] = {}
        while True:
            pid, rss = self.driver.pid, None
            if pid is not None:
                try:
                    proc = procs.setdefault(pid, psutil.Process(pid))
                    rss = proc.memory_info().rss or None  # 0: a killed runner not yet reaped
                except psutil.Error:
                    pid = None
            self.samples.append((time.perf_counter() - self.t0, me.memory_info().rss, pid, rss))
            if self.stop.wait(self.interval_s):
                return


def rss_summary(series: list[tuple[float, int]], warmup_fraction: float = 0.25, warmup_cap_s: float = 60.0,
                tolerance_fraction: float = 0.10, tolerance_floor: int = 128 * MIB) -> dict:
    """Summary of one process's RSS series: warm-up is the first quarter of it (at most 60 s); after it, the
    peak of the second half against the peak of the first half (growth); within tolerance when the growth is
    at most max(10% of the first half's peak, 128 MiB). `within_tolerance` is None with under 10 samples
    after warm-up (too short to judge)."""
    if not series:
        return {"samples": 0}
    t_start, t_end = series[0][0], series[-1][0]
    warm = t_start + min(warmup_cap_s, warmup_fraction * (t_end - t_start))
    after = [r for t, r in series if t >= warm]
    out = {"samples": len(series), "duration_s": round(t_end - t_start, 1), "warmup_s": round(warm - t_start, 1),
           "start_mib": series[0][1] / MIB, "peak_mib": max(r for _, r in series) / MIB,
           "end_mib": series[-1][1] / MIB}
    if len(after) < 10:
        return {**out, "within_tolerance": None, "note": "too short after warm-up to judge growth"}
    half = len(after) // 2
    first, second = max(after[:half]), max(after[half:])
    tolerance = max(tolerance_fraction * first, tolerance_floor)
    return {**out, "after_warmup_first_half_peak_mib": first / MIB, "after_warmup_second_half_peak_mib": second / MIB,
            "growth_mib": (second - first) / MIB, "tolerance_mib": tolerance / MIB,
            "within_tolerance": second - first <= tolerance}


# --------------------------------------------------------------------------------------------- the run
def write_batch_file(path: Path, items: int, item_tokens: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(items):
            topic = rng.choice(TOPICS)
            body = {"messages": [{"role": "user", "content": f"Item {i}: write two sentences about {topic}."}],
                    "max_tokens": item_tokens, "ignore_eos": True, "temperature": 0.7, "seed": seed * 100_000 + i}
            f.write(json.dumps({"custom_id": f"item-{i:05d}", "method": "POST", "url": "/v1/chat/completions",
                                "body": body}) + "\n")


async def session_driver(s: int, store: Any, sessions: Any, facts: Facts, turns_out: list[Turn],
                         chats_out: list[dict], args: argparse.Namespace, keep_going: Any) -> None:
    from app.tui.sessions import DEFAULT_TITLE

    rng = random.Random(args.seed * 1000 + s)
    chat_no = 0
    while keep_going():
        params = {"max_tokens": args.max_tokens, "temperature": 0.7, "top_p": 0.95, "seed": rng.randrange(2**31)}
        chat = await store.create_chat(DEFAULT_TITLE, None, params)
        record = {"session": s, "chat_id": chat.id, "turns": 0}
        chats_out.append(record)
        for t in range(args.turns):
            if not keep_going():
                break
            text = (f"[s{s} c{chat_no} t{t}] " + (rng.choice(QUESTIONS) if t == 0 else rng.choice(FOLLOW_UPS)))
            stop_after = rng.randint(1, max(1, args.max_tokens - 1)) if rng.random() < args.cancel_rate else None
            turn = Turn(s, chat.id, t, text, stop_after)
            facts.current[chat.id] = turn
            turns_out.append(turn)
            record["turns"] += 1
            chat = await store.get_chat(chat.id)
            turn.t_send = time.perf_counter()
            sessions.send(chat, text)
            if stop_after is not None:
                await turn.got_tokens.wait()
                if not turn.done.is_set():
                    turn.stopped = sessions.stop(chat.id)
            try:
                await asyncio.wait_for(turn.done.wait(), args.turn_timeout)
            except asyncio.TimeoutError:
                turn.error = f"no end after {args.turn_timeout} s"
                sessions.stop(chat.id)
                await asyncio.wait_for(turn.done.wait(), 30)
            await asyncio.sleep(rng.uniform(0, args.think_s))
        chat_no += 1


async def soak(args: argparse.Namespace, folder: Path) -> dict:
    from app.jobs import submit_job
    from app.tui.sessions import Sessions
    from backend import Engine, EngineConfig
    from storage import Store

    import torch

    from .core import machine
    from .metrics import distribution

    torch.set_num_threads(args.threads)

    db = folder / "soak.db"
    t0 = time.perf_counter()
    store = await Store.open(db)
    batch_path = folder / "items.jsonl"
    write_batch_file(batch_path, args.items, args.item_tokens, args.seed)
    job = await submit_job(store, batch_path, name="soak")

    cmd = [sys.executable, "-m", "app.cli", "jobs", "run", "--db", str(db), "--model", args.model]
    if args.job_batch_size:
        cmd += ["--max-batch-size", str(args.job_batch_size)]
    hard_deadline = t0 + args.minutes * 60 + args.grace_s
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    driver = JobDriver(db, job.id, args.items, args.kills, cmd, env, folder, hard_deadline, t0)
    sampler = RssSampler(driver, t0)
    sampler.start()
    driver.start()  # the runner loads its model while this process loads its own

    turns: list[Turn] = []
    chats: list[dict] = []
    facts = Facts()
    try:  # on any failure (or Ctrl-C) leave no job runner behind
        engine = await asyncio.to_thread(lambda: Engine(EngineConfig(model=args.model)).start())
        try:
            t_ready = time.perf_counter()
            tasks: list[asyncio.Task] = []
            sessions = Sessions(store, post=facts.post,
                                launch=lambda coro, name: tasks.append(asyncio.create_task(coro, name=name)))
            sessions.attach_engine(TimedEngine(engine, facts))
            deadline = t_ready + args.minutes * 60

            def keep_going() -> bool:
                now = time.perf_counter()
                return now < hard_deadline and (now < deadline or driver.is_alive())

            drivers = [asyncio.create_task(session_driver(s, store, sessions, facts, turns, chats, args, keep_going))
                       for s in range(args.sessions)]
            driver_errors = [repr(r) for r in await asyncio.gather(*drivers, return_exceptions=True) if r is not None]
            t_chats_end = time.perf_counter()
            task_errors = [repr(r) for r in await asyncio.gather(*tasks, return_exceptions=True) if r is not None]
            await asyncio.to_thread(driver.join, max(1.0, hard_deadline - time.perf_counter() + 30))
        finally:
            await asyncio.to_thread(engine.shutdown)
    except BaseException:
        driver.stop.set()
        await asyncio.to_thread(driver.join, 30)
        raise
    finally:
        await store.close()
        sampler.stop.set()
        sampler.join()
    t_end = time.perf_counter()

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        chat_report = check_chats(conn, turns, chats)
        job_report = check_job(conn, job.id, args.items, driver)
    finally:
        conn.close()
    job_report["runner_log_tails"] = {p.name: p.read_text(errors="replace")[-800:]
                                      for p in sorted(folder.glob("runner-*.log"))}

    answered = [t for t in turns if t.token_times]
    ttft = [(t.token_times[0] - t.t_send) * 1000 for t in answered]
    itl = [(b - a) * 1000 for t in answered for a, b in zip(t.token_times, t.token_times[1:])]
    interrupted_live = sorted(driver.seen_interrupted & {t.posted_message_id for t in turns
                                                         if t.posted_finish not in (None, "interrupted")})
    runner_rss = {}
    for pid in dict.fromkeys(p for _, _, p, r in sampler.samples if p is not None):
        runner_rss[str(pid)] = rss_summary([(t, r) for t, _, p, r in sampler.samples if p == pid and r is not None])
    problems = (chat_report.pop("problems") + job_report.pop("problems") + driver.problems
                + [f"session driver failed: {e}" for e in driver_errors]
                + [f"turn task failed: {e}" for e in task_errors]
                + [f"posted fact about no turn: {o}" for o in facts.orphans[:10]])
    device = "cuda" if engine.model.device.type == "cuda" else "cpu"
    return {
        "date": dt.date.today().isoformat(), "machine": machine(), "device": device, "model": args.model,
        "options": {k: v for k, v in vars(args).items() if k != "out_dir"},
        "database": str(db),
        "timing_s": {"engine_ready": t_ready - t0, "chats": t_chats_end - t_ready, "total": t_end - t0,
                     "job_finished": None if driver.finished_at is None else driver.finished_at - t0},
        "chats": chat_report,
        "job": job_report,
        "answers_marked_interrupted_while_streaming": {
            "count": len(interrupted_live), "message_ids": interrupted_live[:50],
            "note": "assistant messages seen with finish_reason 'interrupted' (set by another process opening "
                    "the store: Store._recover) while this process was still streaming them; each was later "
                    "finished with its real reason"},
        "latency_ms": {"ttft_from_send": distribution(ttft), "itl": distribution(itl),
                       "answers": len(answered), "gaps": len(itl)},
        "rss": {"this_process": rss_summary([(t, r) for t, r, _, _ in sampler.samples]),
                "job_runner_by_pid": runner_rss,
                "rule": "warm-up = first quarter of each process's series (at most 60 s); growth = peak of the "
                        "second half after warm-up - peak of the first half; tolerance = max(10% of the first "
                        "half's peak, 128 MiB)",
                "series": [[round(t, 1), round(r / MIB, 1), p, None if rr is None else round(rr / MIB, 1)]
                           for t, r, p, rr in sampler.samples]},
        "posted_facts": dict(facts.kinds),
        "problems": problems,
        "ok": not problems,
    }


def check_chats(conn: sqlite3.Connection, turns: list[Turn], chats: list[dict]) -> dict:
    """Every turn's user message and answer against the `message` table."""
    rows = conn.execute("SELECT id, chat_id, role, content, parent_id, finish_reason, completion_tokens "
                        "FROM message ORDER BY id").fetchall()
    ours = {c["chat_id"] for c in chats}
    users: dict[tuple[int, str], list[tuple]] = {}
    answers: dict[int, list[tuple]] = {}
    for row in rows:
        if row[2] == "user":
            users.setdefault((row[1], row[3]), []).append(row)
        elif row[2] == "assistant":
            answers.setdefault(row[4], []).append(row)
    problems: list[str] = []
    per_chat: dict[int, dict] = {c["chat_id"]: {**c, "user_expected": 0, "user_found": 0, "answers_expected": 0,
                                                "answers_found": 0, "lost": 0, "duplicated": 0}
                                 for c in chats}
    totals = Counter()
    reasons: Counter[str] = Counter()
    matched: set[int] = set()
    for t in turns:
        c = per_chat[t.chat_id]
        c["user_expected"] += 1
        found = users.get((t.chat_id, t.text), [])
        c["user_found"] += len(found)
        matched.update(r[0] for r in found)
        if not found:
            c["lost"] += 1
            problems.append(f"chat {t.chat_id} turn {t.index}: user message lost")
        elif len(found) > 1:
            c["duplicated"] += len(found) - 1
            problems.append(f"chat {t.chat_id} turn {t.index}: user message stored {len(found)} times")
        if t.error is not None:
            totals["failed"] += 1
            problems.append(f"chat {t.chat_id} turn {t.index}: failed: {t.error}")
        if t.stopped:
            totals["stopped"] += 1
        elif t.stop_after is not None:
            totals["stop_not_needed"] += 1  # it ended before the planned stop
        got = [a for r in found for a in answers.get(r[0], [])]
        matched.update(a[0] for a in got)
        expected = 1 if t.token_times else 0
        c["answers_expected"] += expected
        c["answers_found"] += len(got)
        if len(got) < expected:
            c["lost"] += 1
            problems.append(f"chat {t.chat_id} turn {t.index}: answer lost ({len(t.token_times)} tokens streamed)")
        elif len(got) > 1:
            c["duplicated"] += len(got) - 1
            problems.append(f"chat {t.chat_id} turn {t.index}: answer stored {len(got)} times")
        elif len(got) == 1 and expected == 0:
            c["duplicated"] += 1
            problems.append(f"chat {t.chat_id} turn {t.index}: an answer is stored, but no token was streamed")
        if len(got) != 1:
            continue
        _, _, _, content, _, reason, completion_tokens = got[0]
        reasons[reason] += 1
        if reason != t.posted_finish or got[0][0] != t.posted_message_id:
            totals["reason_or_id_differs_from_posted"] += 1
            problems.append(f"chat {t.chat_id} turn {t.index}: stored {reason!r} (id {got[0][0]}), posted "
                            f"{t.posted_finish!r} (id {t.posted_message_id})")
        if reason != t.engine_finish:
            totals["reason_differs_from_engine"] += 1
            problems.append(f"chat {t.chat_id} turn {t.index}: stored {reason!r}, the engine ended it {t.engine_finish!r}")
        if reason not in ("stop", "length", "cancelled"):
            totals["unfinished"] += 1
            problems.append(f"chat {t.chat_id} turn {t.index}: answer left {reason!r}")
        if t.stopped and reason != "cancelled":
            totals["stop_came_too_late"] += 1  # the answer ended on its own before the cancel reached it
        if content != "".join(t.streamed) or content != "".join(t.engine_text):
            totals["text_differs"] += 1
            problems.append(f"chat {t.chat_id} turn {t.index}: stored text differs from the streamed text "
                            f"({len(content)} vs {len(''.join(t.streamed))} characters)")
        if completion_tokens != len(t.token_times):
            totals["token_count_differs"] += 1
            problems.append(f"chat {t.chat_id} turn {t.index}: stored {completion_tokens} tokens, "
                            f"{len(t.token_times)} streamed")
    stray = [r for r in rows if r[0] not in matched]
    for r in stray[:20]:
        problems.append(f"stray message {r[0]} ({r[2]}) in chat {r[1]}"
                        + ("" if r[1] in ours else " (not a soak chat)"))
    dup_users = conn.execute("SELECT count(*) FROM (SELECT 1 FROM message WHERE role = 'user' "
                             "GROUP BY chat_id, content HAVING count(*) > 1)").fetchone()[0]
    dup_answers = conn.execute("SELECT count(*) FROM (SELECT 1 FROM message WHERE role = 'assistant' "
                               "GROUP BY parent_id HAVING count(*) > 1)").fetchone()[0]
    chat_rows = conn.execute("SELECT count(*) FROM chat").fetchone()[0]
    if chat_rows != len(chats):
        problems.append(f"{chat_rows} chats stored, {len(chats)} created")
    chats_list = list(per_chat.values())
    summed = {k: sum(c[k] for c in chats_list)
              for k in ("user_expected", "user_found", "answers_expected", "answers_found", "lost", "duplicated")}
    return {
        "sessions": len({c["session"] for c in chats_list}), "chats": len(chats_list), "chats_stored": chat_rows,
        "turns": len(turns), **summed,
        "lost": summed["lost"], "duplicated": summed["duplicated"] + len(stray),
        "stray_messages": len(stray),
        "sql_duplicate_user_groups": dup_users, "sql_duplicate_answer_groups": dup_answers,
        "finish_reasons": dict(reasons),
        "stopped_mid_stream": totals["stopped"], "stop_came_too_late": totals["stop_came_too_late"],
        "stop_not_needed": totals["stop_not_needed"], "failed_turns": totals["failed"],
        "mismatches": {k: totals[k] for k in ("reason_or_id_differs_from_posted", "reason_differs_from_engine",
                                                "unfinished", "text_differs", "token_count_differs")},
        "per_session": _per_session(chats_list),
        "per_chat": chats_list,
        "problems": problems,
    }


def _per_session(chats: list[dict]) -> list[dict]:
    out: dict[int, Counter] = {}
    for c in chats:
        row = out.setdefault(c["session"], Counter())
        row["chats"] += 1
        for k in ("turns", "user_expected", "user_found", "answers_expected", "answers_found", "lost", "duplicated"):
            row[k] += c[k]
    return [{"session": s, **dict(row)} for s, row in sorted(out.items())]


def check_job(conn: sqlite3.Connection, job_id: int, items: int, driver: JobDriver) -> dict:
    """Every job item against the `job_item` table: once, done, its own result, untouched after a kill."""
    problems: list[str] = []
    n, n_idx, n_cid = conn.execute("SELECT count(*), count(DISTINCT idx), count(DISTINCT custom_id) "
                                   "FROM job_item WHERE job_id = ?", (job_id,)).fetchone()
    statuses = dict(conn.execute("SELECT status, count(*) FROM job_item WHERE job_id = ? GROUP BY status",
                                 (job_id,)).fetchall())
    job_status = conn.execute("SELECT status FROM job WHERE id = ?", (job_id,)).fetchone()[0]
    rows = conn.execute("SELECT idx, custom_id, completed_at, result FROM job_item WHERE job_id = ? AND status = 'done'",
                        (job_id,)).fetchall()
    results = {idx: json.loads(result) for idx, _, _, result in rows}
    misattributed = [idx for idx, cid, _, _ in rows if results[idx]["custom_id"] != cid]
    request_ids = [r["response"]["request_id"] for r in results.values()]
    expected_ids = {f"item-{i:05d}" for i in range(items)}
    found_ids = {r[0] for r in conn.execute("SELECT custom_id FROM job_item WHERE job_id = ?", (job_id,))}
    final = {idx: (at, result) for idx, _, at, result in rows}
    rewritten = sorted({idx for before in driver.done_at_kill for idx, v in before.items() if final.get(idx) != v})
    lost = len(expected_ids - found_ids) + statuses.get("pending", 0)
    duplicated = (n - n_idx) + (len(request_ids) - len(set(request_ids))) + len(misattributed) + len(rewritten)
    tokens = Counter(r["response"]["body"]["usage"]["completion_tokens"] for r in results.values())
    if n != items or n_idx != items or n_cid != items or expected_ids != found_ids:
        problems.append(f"job items: {n} rows, {n_idx} indexes, {n_cid} custom ids; {items} expected")
    if statuses.get("pending"):
        problems.append(f"job items: {statuses['pending']} never finished")
    if statuses.get("failed"):
        problems.append(f"job items: {statuses['failed']} failed")
    if len(set(request_ids)) != len(request_ids):
        problems.append(f"job items: {len(request_ids) - len(set(request_ids))} results share a request id")
    if misattributed:
        problems.append(f"job items: {len(misattributed)} results carry another item's custom id")
    if rewritten:
        problems.append(f"job items: {len(rewritten)} items done before a kill changed after it: {rewritten[:10]}")
    if job_status != "done":
        problems.append(f"the job is {job_status}, not done")
    kills = [e for e in driver.events if e["event"] == "sigkill"]
    starts = [e for e in driver.events if e["event"] == "start"]
    return {
        "job_id": job_id, "items_expected": items, "item_rows": n, "distinct_indexes": n_idx,
        "distinct_custom_ids": n_cid, "statuses": statuses, "job_status": job_status,
        "distinct_request_ids": len(set(request_ids)), "results": len(request_ids),
        "misattributed_results": len(misattributed), "done_before_a_kill_changed_after": len(rewritten),
        "completion_tokens": dict(tokens), "lost": lost, "duplicated": duplicated,
        "sigkills": len(kills), "resumes": max(0, len(starts) - 1),
        "pending_at_kills": [items - e["finished_at_kill"] for e in kills],
        "runner_events": driver.events,
        "problems": problems,
    }


# ------------------------------------------------------------------------------------------- output
def print_report(r: dict) -> None:
    c, j = r["chats"], r["job"]
    print(f"\nsoak: {r['model']}, {c['sessions']} sessions, {r['timing_s']['chats'] / 60:.1f} min of chats, "
          f"{r['timing_s']['total']:.0f} s in all; {r['machine']}")
    print(f"{'':24s} {'expected':>9s} {'found':>9s} {'lost':>6s} {'duplicated':>11s}")
    print(f"{'user messages':24s} {c['user_expected']:9d} {c['user_found']:9d}")
    print(f"{'answers':24s} {c['answers_expected']:9d} {c['answers_found']:9d}")
    print(f"{'chat messages, in all':24s} {c['user_expected'] + c['answers_expected']:9d} "
          f"{c['user_found'] + c['answers_found']:9d} {c['lost']:6d} {c['duplicated']:11d}")
    print(f"{'job items':24s} {j['items_expected']:9d} {j['item_rows']:9d} {j['lost']:6d} {j['duplicated']:11d}")
    print(f"chats: {c['chats']} chats, {c['turns']} turns; finish reasons {c['finish_reasons']}; "
          f"stopped mid-stream {c['stopped_mid_stream']} (of which ended on their own first: "
          f"{c['stop_came_too_late']}); failed {c['failed_turns']}; mismatches {c['mismatches']}")
    print(f"job: statuses {j['statuses']}, job {j['job_status']}; distinct request ids {j['distinct_request_ids']}; "
          f"SIGKILLs {j['sigkills']} (pending at each: {j['pending_at_kills']}), resumes {j['resumes']}; "
          f"done before a kill and changed after: {j['done_before_a_kill_changed_after']}")
    print(f"{'per session':12s} " + " ".join(f"{k:>10s}" for k in ("chats", "turns", "users", "answers", "lost", "dup")))
    for s in c["per_session"]:
        print(f"{s['session']:12d} " + " ".join(f"{s.get(k, 0):10d}" for k in
                                                ("chats", "turns", "user_found", "answers_found", "lost", "duplicated")))
    print(f"{'RSS (MiB)':22s} {'start':>8s} {'peak':>8s} {'end':>8s} {'growth':>8s} {'tolerance':>10s}  ok")
    rows = [("this process", r["rss"]["this_process"])]
    rows += [(f"job runner pid {pid}", s) for pid, s in r["rss"]["job_runner_by_pid"].items()]
    for name, s in rows:
        if not s.get("samples"):
            continue
        growth = f"{s['growth_mib']:8.1f}" if "growth_mib" in s else f"{'-':>8s}"
        tol = f"{s['tolerance_mib']:10.1f}" if "tolerance_mib" in s else f"{'-':>10s}"
        print(f"{name:22s} {s['start_mib']:8.1f} {s['peak_mib']:8.1f} {s['end_mib']:8.1f} {growth} {tol}  "
              f"{s['within_tolerance']}")
    lat = r["latency_ms"]
    fmt = lambda v: "-" if v is None else f"{v:,.1f}"  # noqa: E731
    print(f"chat latency (ms): TTFT p50 {fmt(lat['ttft_from_send']['median'])} p99 {fmt(lat['ttft_from_send']['p99'])}"
          f"; ITL p50 {fmt(lat['itl']['median'])} p99 {fmt(lat['itl']['p99'])} ({lat['answers']} answers, "
          f"{lat['gaps']} gaps)")
    marked = r["answers_marked_interrupted_while_streaming"]["count"]
    if marked:
        print(f"note: {marked} answers were seen marked 'interrupted' by the job runner's store recovery while "
              "they were still streaming here (each finished with its real reason later)")
    for p in r["problems"][:30]:
        print(f"PROBLEM: {p}")
    print("OK: nothing lost or duplicated" if r["ok"] else f"FAILED: {len(r['problems'])} problem(s)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="minutes of chats (default: %(default)s)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--items", type=int, default=500, help="batch job items (default: %(default)s)")
    ap.add_argument("--max-tokens", type=int, default=64, help="max tokens of a chat answer (default: %(default)s)")
    ap.add_argument("--item-tokens", type=int, default=32, help="output tokens of a job item (default: %(default)s)")
    ap.add_argument("--turns", type=int, default=4, help="turns of a chat before its session opens a new one")
    ap.add_argument("--cancel-rate", type=float, default=0.25, help="share of answers stopped mid-stream")
    ap.add_argument("--think-s", type=float, default=0.5, help="most seconds between an answer and the next turn")
    ap.add_argument("--kills", type=int, default=1, help="SIGKILLs of the job runner (default: %(default)s)")
    ap.add_argument("--job-batch-size", type=int, default=None, help="the job runner's --max-batch-size")
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                    help="torch threads of this process and of the job runner each (default: half the cores, so "
                         "the two processes do not oversubscribe them: %(default)s)")
    ap.add_argument("--grace-s", type=float, default=None,
                    help="most seconds past --minutes to wait for the job (default: max(120, 2 x minutes))")
    ap.add_argument("--turn-timeout", type=float, default=600.0, help="seconds before a turn that never ends fails")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=None, help="default: benchmarks/results")
    ap.add_argument("--keep-db", action="store_true", help="keep the temp folder with the database and logs")
    ap.add_argument("--smoke", action="store_true",
                    help="random:tiny, 4 sessions, 40 items, 0.5 minute (a few tens of seconds)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.model, args.sessions, args.items, args.minutes = "random:tiny", 4, 40, 0.5
        args.max_tokens, args.item_tokens = 32, 16
        args.job_batch_size = args.job_batch_size or 8  # items finish 8 at a time, 16 steps apart  # stretches the job over many steps between kills
    if args.grace_s is None:
        args.grace_s = max(120.0, 2 * args.minutes * 60)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="baton-soak-"))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # killed politely: end the job runner too
    try:
        result = asyncio.run(soak(args, folder))
    except KeyboardInterrupt:
        print("soak: interrupted (the job runner was killed)", file=sys.stderr)
        return 130
    finally:
        if not args.keep_db:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
    print_report(result)
    from .core import RESULTS

    out_dir = args.out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result['date']}-{result['device']}-soak{'-smoke' if args.smoke else ''}.json"
    result["options"]["out_dir"] = str(out_dir)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
