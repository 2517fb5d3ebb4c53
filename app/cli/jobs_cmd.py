"""`baton jobs`: persistent background jobs from the command line.

    baton jobs submit FILE [--name NAME]     store a job (an OpenAI Batch .jsonl file or an agent task
                                             .yaml/.yml/.json); prints its id; does not run it
    baton jobs list                          the jobs, newest first (also what plain `baton jobs` does)
    baton jobs show ID                       one job: status, item counts, failed items, the agent chat id
    baton jobs pause ID | resume ID | cancel ID
    baton jobs export ID -o OUT.jsonl        a batch job's OpenAI Batch output lines, in input order
    baton jobs run [--watch] [engine options]  run queued jobs, oldest first, progress on stderr

Every action takes `--db PATH` (default: `storage.default_db_path()`). `export` writes one line per input
line like `baton batch`: a done item's output line, a failed item's error line, and for an item not run yet
(the job is paused, cancelled or unfinished) an error line with code `not_run`.

Hook into `app.cli.main`: `add_jobs_subparser(sub, engine)` with the `baton` subparsers and the engine
options parent parser; each action sets `handler` (args -> exit status) and raises `UsageError` for anything
the user must fix (a bad file, an unknown job, a database that cannot be used: exit status 2). `list`, `show`
and the other store-only actions never import torch; only `run` loads the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, Awaitable, Callable

from .. import jobs
from ..jobs.export import export_job
from .engine_options import engine_config, start_engine
from .errors import UsageError

JOBS_DESCRIPTION = ("Persistent background jobs, stored in the history database: OpenAI Batch files (.jsonl, "
                    "like 'baton batch') and agent tasks (.yaml/.yml/.json: a system prompt and steps whose "
                    "prompts may use {previous}). Jobs survive restarts; 'baton jobs run' works through them.")


def add_jobs_subparser(subparsers: Any, engine_parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `jobs` command and its actions to `baton`'s subparsers.

    Args:
        subparsers: what `ArgumentParser.add_subparsers()` returned.
        engine_parent: the parent parser with the engine options (`engine_options.add_engine_options`),
            used by `jobs run`.
    Returns:
        The `jobs` parser. Parsed arguments carry `handler` (args -> exit status) and `jobs_command`.
    """
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS,
                    help="history database (default: baton.db in the user data folder; the folder of a "
                         "PATH given here must exist)")
    parser = subparsers.add_parser("jobs", parents=[db], help="persistent background jobs (batch files, agent tasks)",
                                   description=JOBS_DESCRIPTION)
    parser.set_defaults(handler=handle_list)
    sub = parser.add_subparsers(dest="jobs_command", metavar="ACTION")
    submit = sub.add_parser("submit", parents=[db], help="store a job file as a queued job (prints its id)",
                            description="Store FILE as a queued job and print its id; 'baton jobs run' runs it. "
                                        "FILE: an OpenAI Batch .jsonl file, or an agent task .yaml/.yml/.json.")
    submit.add_argument("file", metavar="FILE", help="the job file")
    submit.add_argument("--name", help="the job's name (default: the task's name, else the file name)")
    submit.set_defaults(handler=handle_submit)
    sub.add_parser("list", parents=[db], help="list the jobs, newest first").set_defaults(handler=handle_list)
    _add_id_actions(sub, db)
    export = sub.add_parser("export", parents=[db], help="write a batch job's OpenAI Batch output file",
                            description="Write a batch job's OpenAI Batch output lines, one per input line in input "
                                        "order (items not run yet get an error line with code not_run).")
    export.add_argument("job_id", type=int, metavar="ID", help="the job id")
    export.add_argument("-o", "--output", metavar="OUT.jsonl", required=True,
                        help="output file (written atomically; replaced if it exists)")
    export.set_defaults(handler=handle_export)
    run = sub.add_parser("run", parents=[db, engine_parent], help="run the queued jobs (progress on stderr)",
                         description="Load the model and run the queued jobs one by one, oldest first; progress "
                                     "goes to stderr. Exits when none is left, unless --watch.")
    run.add_argument("--watch", action="store_true", help="keep waiting for new jobs (Ctrl-C ends)")
    run.add_argument("--poll", type=float, default=1.0, metavar="S",
                     help="seconds between looks at the queue and at a running job's status (default: %(default)s)")
    run.set_defaults(handler=handle_run)
    return parser


def _add_id_actions(sub: Any, db: argparse.ArgumentParser) -> None:
    """`show`, `pause`, `resume`, `cancel`: each takes one job ID."""
    for action, help_text, handler in (
            ("show", "show a job: status, item counts, failed items", handle_show),
            ("pause", "pause a job (requests in flight are stopped; their items run again on resume)", handle_pause),
            ("resume", "queue a paused (or failed: retry its failed items) job again", handle_resume),
            ("cancel", "cancel a job for good (its pending items never run)", handle_cancel)):
        p = sub.add_parser(action, parents=[db], help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        p.add_argument("job_id", type=int, metavar="ID", help="the job id")
        p.set_defaults(handler=handler)


# ------------------------------------------------------------------------------------------ handlers
def _with_store(body: Callable[[Any, argparse.Namespace], Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    """A handler that opens the store, runs `body(store, args)` and turns bad input into `UsageError`."""
    def handler(args: argparse.Namespace) -> int:
        from storage import StorageError, Store

        async def go() -> int:
            async with await Store.open(getattr(args, "db", None)) as store:
                return await body(store, args)

        try:
            return asyncio.run(go())
        except (StorageError, ValueError) as exc:
            raise UsageError(str(exc)) from exc
    handler.__doc__ = body.__doc__
    return handler


@_with_store
async def handle_submit(store, args: argparse.Namespace) -> int:
    """`jobs submit FILE [--name NAME]`: prints the new job's id on stdout."""
    job = await jobs.submit_job(store, args.file, args.name)
    print(job.id)
    extra = f"; transcript chat {job.spec['chat_id']}" if job.kind == "agent" else ""
    print(f"baton: jobs: queued {job.kind} job {job.id} {job.name!r} ({job.total} items{extra}); "
          "run it with 'baton jobs run'", file=sys.stderr)
    return 0


@_with_store
async def handle_list(store, args: argparse.Namespace) -> int:
    """`jobs list`: a table of every job, newest first."""
    rows = [("ID", "KIND", "NAME", "STATUS", "DONE/FAILED/TOTAL", "CREATED")]
    rows += [(str(j.id), j.kind, _short(j.name, 32), j.status, f"{j.done}/{j.failed}/{j.total}", _time(j.created_at))
             for j in await store.list_jobs()]
    if len(rows) == 1:
        print("baton: jobs: no jobs", file=sys.stderr)
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    return 0


@_with_store
async def handle_show(store, args: argparse.Namespace) -> int:
    """`jobs show ID`: the job's details and a per-item status summary."""
    job = await jobs.require_job(store, args.job_id)
    items = await store.list_items(job.id)
    print(f"job {job.id}: {job.kind} {job.name!r}")
    print(f"status: {job.status}")
    print(f"items: {job.done} done, {job.failed} failed, {job.pending} pending, {job.total} total")
    if job.source_path:
        print(f"source: {job.source_path}")
    print(f"created: {_time(job.created_at)}  updated: {_time(job.updated_at)}")
    if job.kind == "agent":
        print(f"chat: {job.spec.get('chat_id')}")
        for item in items:
            print(f"  step {item.idx + 1}: {item.status}" + (f": {item.error}" if item.error else ""))
        return 0
    failed = [i for i in items if i.status == "failed"]
    for item in failed[:20]:
        print(f"  failed item {item.idx} (custom_id {item.custom_id!r}): {_short(item.error or '', 120)}")
    if len(failed) > 20:
        print(f"  ... and {len(failed) - 20} more failed items")
    return 0


@_with_store
async def handle_pause(store, args: argparse.Namespace) -> int:
    """`jobs pause ID`."""
    return _changed(await jobs.pause_job(store, args.job_id))


@_with_store
async def handle_resume(store, args: argparse.Namespace) -> int:
    """`jobs resume ID`."""
    return _changed(await jobs.resume_job(store, args.job_id))


@_with_store
async def handle_cancel(store, args: argparse.Namespace) -> int:
    """`jobs cancel ID`."""
    return _changed(await jobs.cancel_job(store, args.job_id))


@_with_store
async def handle_export(store, args: argparse.Namespace) -> int:
    """`jobs export ID -o OUT.jsonl`: written atomically; a summary line on stderr."""
    summary = await export_job(store, args.job_id, args.output)
    print(f"baton: jobs: {summary.line()}", file=sys.stderr)
    return 0


@_with_store
async def handle_run(store, args: argparse.Namespace) -> int:
    """`jobs run [--watch]`: load the model (only when there is work) and run the queued jobs."""
    config = engine_config(args)
    if args.poll <= 0:
        raise UsageError(f"--poll: must be > 0, got {args.poll}")
    if not args.watch and not any(j.status == "queued" for j in await store.list_jobs()):
        print("baton: jobs: no queued jobs", file=sys.stderr)
        return 0
    engine = await asyncio.to_thread(start_engine, config)
    try:
        runner = jobs.JobRunner(store, engine, on_progress=jobs.ProgressPrinter(sys.stderr), poll_s=args.poll)
        ran = await runner.run_queued(watch=args.watch, poll_s=args.poll)
    finally:
        await asyncio.to_thread(engine.shutdown)
    left = sum(1 for j in await store.list_jobs() if j.status == "queued")
    print(f"baton: jobs: ran {len(ran)} job(s); {left} left in the queue", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------- helpers
def _changed(job) -> int:
    print(f"baton: jobs: job {job.id} is {job.status}", file=sys.stderr)
    return 0


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _time(stamp) -> str:
    return stamp.astimezone().strftime("%Y-%m-%d %H:%M:%S")
