"""A chat streamed through the TUI while a batch job runs beside it, with the interactive latency target on and off.

    python -m benchmarks.tui_priority                  # SmolLM2-135M, a 32-line job, target 1.5 vs off (~6 min)
    python -m benchmarks.tui_priority --update-docs    # ... and refresh its table in docs/benchmarks.md
    python -m benchmarks.tui_priority --smoke --out-dir D   # random:tiny, seconds

What a person at the terminal gets (issue #13's TUI-level run): the real app (`BatonApp`, headless through
Textual's Pilot at 120x40, the live panel open) over one engine, its own job runner running a `--job-lines` OpenAI
Batch job (ShareGPT prompts up to 1,024 tokens, `--job-tokens` output tokens each) that was submitted to the
store before the app opened, and `--chats` turns of one chat put into the prompt (as a paste) and sent with
Enter, each after the last answer ended and `--think-s` seconds. Scenarios, each with a fresh engine and
database: `idle` (no job), `job, target off`, `job, target X` (`EngineConfig.interactive_tpot_slo = X`).

The chat's token times are the app's own: when each engine output reaches the TUI's session controller
(`Sessions._take`, on the app's event loop, so a stalled loop shows as a gap) against the moment Enter was
pressed. Reports TTFT (median, max), TPOT (median), ITL p99 and max over all the chat's tokens, the job rows in
the batch while the chats streamed (so a job that ended early is seen), and the job's output tokens/s over the
run. Writes `<out-dir>/<date>-<device>-tui-priority[-smoke].json`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from backend import Engine, EngineConfig, EngineProcess, load_model

from .core import RESULTS, machine
from .docs_section import replace_section
from .priority import _warm_up
from .report import relative

DOCS_SECTION = "tui-priority"
QUESTIONS = ["Give me three tips for writing clear documentation.",
             "Now make the second tip shorter, in one sentence.",
             "Which of the three matters most for a beginner, and why?"]
DEFAULTS = {"model": "smollm2-135m-instruct", "job_lines": 32, "job_tokens": 256, "chats": 3,
            "think_s": 1.0, "slo": 1.5, "max_batch_size": 32, "timeout_s": 600.0}
SMOKE = {"model": "random:tiny", "job_lines": 8, "job_tokens": 512, "chats": 2, "think_s": 0.2,
         "slo": 1.5, "max_batch_size": 8, "timeout_s": 120.0}


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _job_file(path: Path, args, loaded) -> Path:
    """The job: `job_lines` OpenAI Batch lines of ShareGPT prompts (synthetic ones for the smoke run)."""
    if args.smoke:
        prompts = [" ".join(["job"] * (4 + 13 * i % 90)) for i in range(args.job_lines)]
    else:
        from .sharegpt import load_samples
        prompts = [s.prompt for s in load_samples(args.job_lines, seed=3, tokenizer=loaded.tokenizer, max_input=1024)]
    lines = [{"custom_id": f"item-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"messages": [{"role": "user", "content": p}], "max_tokens": args.job_tokens,
                       "temperature": 0, "ignore_eos": True}} for i, p in enumerate(prompts)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


async def _wait(pilot, condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(0.05)
    return value


async def _scenario(loaded, slo: float | None, with_job: bool, args) -> dict:
    from app.jobs import submit_job
    from app.tui.app import BatonApp
    from app.tui.sessions import Sessions
    from app.tui.widgets.prompt_input import PromptInput
    from storage import Store

    folder = Path(tempfile.mkdtemp(prefix="baton-tui-priority-"))
    db = folder / "baton.db"
    if with_job:
        async with await Store.open(db) as store:
            await submit_job(store, _job_file(folder / "job.jsonl", args, loaded))
    config = EngineConfig(model=loaded.name, max_batch_size=args.max_batch_size, interactive_tpot_slo=slo)
    engine = (EngineProcess(config) if args.engine_process else Engine(config, loaded=loaded)).start()
    await asyncio.to_thread(_warm_up, engine)  # the step cost model's row counts, as benchmarks.priority does
    arrivals: dict[str, list[float]] = {}
    original = Sessions._take

    async def timed_take(self, gen, out, eng):  # the app's own clock: the output reaches its event loop
        if out.token_id is not None:
            arrivals.setdefault(gen.request_id, []).append(time.perf_counter())
        await original(self, gen, out, eng)

    Sessions._take = timed_take
    turns, job_rows, samples = [], [], []
    job_tokens_before = job_tokens_after = 0
    try:
        app = BatonApp(engine=engine, db_path=db)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await _wait(pilot, lambda: app.chat_screen is not None and app.chat_screen.is_mounted
                                 and app.chat_screen, args.timeout_s, "the chat screen")
            sessions = screen.sessions
            await _wait(pilot, lambda: sessions.engine is not None, args.timeout_s, "the model")
            if with_job:  # the job fills the batch first, and the cost model has learned the steps
                await _wait(pilot, lambda: sum(r.priority != "interactive" for r in engine.stats().rows) >= min(
                    args.job_lines, args.max_batch_size) // 2, args.timeout_s, "the job's rows")
                if slo is not None:
                    await _wait(pilot, lambda: engine.stats().step_cost_coefficients is not None, args.timeout_s,
                                "the step cost model")
            t_start = time.perf_counter()
            job_tokens_before = engine.stats().counters.get("num_generated_tokens", 0)
            for i in range(args.chats):
                await pilot.pause(args.think_s)
                prompt = screen.query_one(PromptInput)
                prompt.focus()
                # the text as a paste (Pilot's `press` waits for the app to go idle after every key, which takes
                # a minute for a sentence while the engine streams: the job would be over before the chat)
                prompt.load_text(QUESTIONS[i % len(QUESTIONS)])
                known = set(arrivals)
                sent = time.perf_counter()
                await pilot.press("enter")
                rid = await _wait(pilot, lambda: next((r for r in arrivals if r not in known), None),
                                  args.timeout_s, "the first token")
                while sessions.busy_chats():
                    samples.append(sum(r.priority != "interactive" for r in engine.stats().rows))
                    await pilot.pause(0.05)
                times = arrivals[rid]
                turns.append({"sent": sent, "times": times})
            t_end = time.perf_counter()
            job_tokens_after = engine.stats().counters.get("num_generated_tokens", 0)
            if app.job_runner is not None:
                await app.stop_jobs()
    finally:
        Sessions._take = original
        engine.shutdown()
    ttft = [(t["times"][0] - t["sent"]) * 1000 for t in turns]
    itl = [(b - a) * 1000 for t in turns for a, b in zip(t["times"], t["times"][1:])]
    tpot = [(t["times"][-1] - t["times"][0]) * 1000 / max(1, len(t["times"]) - 1) for t in turns]
    return {"slo": slo, "job": with_job, "chats": len(turns), "chat_tokens": [len(t["times"]) for t in turns],
            "ttft_ms": {"median": _pct(ttft, 50), "max": max(ttft)}, "tpot_ms_median": _pct(tpot, 50),
            "itl_ms_p99": _pct(itl, 99), "itl_ms_max": max(itl, default=None),
            "job_rows_during_chats": {"median": _pct(samples, 50), "min": min(samples, default=None)},
            "job_ended_before_the_chats": with_job and not any(samples),
            "output_tok_s_during_chats": (job_tokens_after - job_tokens_before) / max(1e-9, t_end - t_start),
            "token_ms": [[round((x - t["sent"]) * 1000, 1) for x in t["times"]] for t in turns]}


def _ms(x) -> str:
    return "-" if x is None else f"{x:,.0f}"


def markdown(result: dict, path: str) -> str:
    rows = ["| scenario | answer tokens per turn | TTFT median / max (ms) | TPOT median (ms) | ITL p99 / max (ms) | "
            "job rows while chatting (median, min) | engine output tok/s while chatting |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in result["scenarios"].items():
        rows.append(f"| {name} | {', '.join(map(str, r['chat_tokens']))} | "
                    f"{_ms(r['ttft_ms']['median'])} / {_ms(r['ttft_ms']['max'])} | "
                    f"{_ms(r['tpot_ms_median'])} | {_ms(r['itl_ms_p99'])} / {_ms(r['itl_ms_max'])} | "
                    f"{_ms(r['job_rows_during_chats']['median'])}, {_ms(r['job_rows_during_chats']['min'])} | "
                    f"{r['output_tok_s_during_chats']:.1f} |")
    return (f"Measured {result['date']} on {result['machine']} ({result['model']}, {result['args']['chats']} chat "
            f"turns with the app's default settings, each answer ending where the model stops, a "
            f"{result['args']['job_lines']}-line job of "
            f"{result['args']['job_tokens']} output tokens a line, `max_batch_size` "
            f"{result['args']['max_batch_size']}; `{result['command']}`, results in `{path}`):\n\n" + "\n".join(rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key, value in DEFAULTS.items():
        ap.add_argument("--" + key.replace("_", "-"), type=type(value) if key != "model" else str, default=None,
                        help=f"default {value}")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--engine-process", choices=("on", "off", "both"), default="both",
                    help="the engine core in a child process (`EngineProcess`, as `baton` runs it), in the app's "
                         "process (`Engine`), or each scenario both ways (default)")
    ap.add_argument("--scenarios", default=None,
                    help="semicolon-separated scenario names to run, without the process suffix (default: all), "
                         "e.g. 'idle;job, target 1.5'")
    ap.add_argument("--tag", default="", help="results file suffix (a reduced or experimental run)")
    ap.add_argument("--smoke", action="store_true", help="random:tiny, an 8-line job, 2 chat turns (seconds)")
    ap.add_argument("--update-docs", action="store_true", help=f"replace the '{DOCS_SECTION}' section of "
                    "docs/benchmarks.md with this run's table")
    args = ap.parse_args(argv)
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.engine_process]
    for key, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    loaded = load_model(args.model)
    result = {"date": dt.date.today().isoformat(), "machine": machine(), "model": args.model,
              "device": "cuda" if loaded.device.type == "cuda" else "cpu", "torch_threads": torch.get_num_threads(),
              "command": "python -m benchmarks.tui_priority " + " ".join(argv if argv is not None else sys.argv[1:]),
              "args": {k: getattr(args, k) for k in DEFAULTS}, "scenarios": {}}
    wanted = None if args.scenarios is None else {n.strip() for n in args.scenarios.split(";")}
    for name, slo, job, process in [(f"{name}, {'child process' if process else 'in-process'}", slo, job, process)
                                    for process in modes
                                    for name, slo, job in (("idle", None, False), ("job, target off", None, True),
                                                           (f"job, target {args.slo:g}", args.slo, True))
                                    if wanted is None or name in wanted]:
        args.engine_process = process
        t = time.perf_counter()
        row = asyncio.run(_scenario(loaded, slo, job, args))
        row["wall_s"] = time.perf_counter() - t
        result["scenarios"][name] = row
        print(f"{name:32s} TTFT {_ms(row['ttft_ms']['median'])} / {_ms(row['ttft_ms']['max'])} ms  "
              f"TPOT {_ms(row['tpot_ms_median'])} ms  ITL p99 {_ms(row['itl_ms_p99'])} max {_ms(row['itl_ms_max'])} ms"
              f"  job rows {row['job_rows_during_chats']}  tok/s {row['output_tok_s_during_chats']:.1f}"
              f"  ({row['wall_s']:.0f} s)" + ("  INVALID: the job ended before the chats" if
                                              row["job_ended_before_the_chats"] else ""), flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"{result['date']}-{result['device']}-tui-priority{'-smoke' if args.smoke else ''}{'-' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    if args.update_docs:
        print(f"updated {replace_section(DOCS_SECTION, markdown(result, relative(path)))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
