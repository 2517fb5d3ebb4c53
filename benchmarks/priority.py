"""Interactive latency with background work filling the batch, with the interactive latency target on and off.

    python -m benchmarks.priority                       # SmolLM2-135M, 32 background rows, target 1.5 vs off
    python -m benchmarks.priority --update-docs         # ... and refresh its table in docs/benchmarks.md
    python -m benchmarks.priority --docs-from FILE      # only regenerate the table from a results JSON
    python -m benchmarks.priority --smoke --out-dir D   # random:tiny, seconds (tests/test_priority_smoke.py)

Scenarios, each on a fresh engine over one loaded model (names as in the JSON):
- `idle`: the interactive requests alone (the reference; no target).
- `busy, target off` / `busy, target X`: `--batch-size` background requests (ShareGPT prompts up to 256
  tokens, `Priority.BATCH`, `--background-tokens` output tokens) fill the batch, then the chats arrive one
  after another; a background row is swapped out for each (preemption, BATON §4.3), and with the target
  (`EngineConfig.interactive_tpot_slo = X`) background rows over its cap are swapped out while a chat decodes.
- `joining, target off` / `joining, target X`: a job that keeps 2 x `--batch-size` background requests in
  flight (prompts up to 1,024 tokens, `--joining-tokens` output tokens each) so rows keep finishing and
  newcomers keep being prefilled while the chats decode (`max_background_prefill_tokens` at its default).
- With `--legacy`, also the earlier `busy, no preemption` (`max_preemptions=0`) and `joining, no background
  budget` (`max_background_prefill_tokens=None`) scenarios.

Every engine first runs the same warm-up (a few short generations at 1 and 4 rows, so the step-cost model of
`backend/step_cost.py` has the two row counts it needs), then the background starts; in the target-on scenarios
the first chat is sent only once `engine.stats().step_cost_coefficients` is not None. A quiet window of
`--quiet-s` seconds precedes each chat, and a window of `--after-s` seconds with no chat follows the last one:
the background's output tokens/s in the window after the chats (no chat active; it starts as the last chat ends,
so it includes the return to full speed), in the short windows between chats, and during the chats are reported,
and its total (prompt tokens prefilled + output) tokens/s in the window after the chats: the throughput the
target must leave unchanged (vLLM's "total token throughput": a job of long prompts and 16-token answers
produces output in bursts after multi-second prefills, so its output rate over a window measures where the window
falls more than the work done), with the SLO stats seen while the chats decoded (background
cap, target and predicted step ms, SLO swap-outs, iterations held back). The short windows alone do not measure
throughput: right after a chat they hold the rows it parked, which all decode at once (target on), or the
prompts it held back, which must be prefilled first.

Reports per scenario: TTFT and TPOT of the `--chats` interactive requests (median, p99), ITL p99 and max over
all their tokens, and the targets: TPOT <= 1.5x idle, TTFT <= 1.3x idle, ITL p99 <= 2x idle TPOT (medians), and
the background's no-chat throughput unchanged by the target. Writes
`<out-dir>/<date>-<device>-priority[-<tag>|-smoke].json`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from backend import Engine, EngineConfig, Priority, SamplingParams, load_model

from .core import RESULTS, machine
from .docs_section import replace_section
from .report import relative

QUESTION = [{"role": "user", "content": "Give me three tips for writing clear documentation."}]
DOCS_SECTION = "priority-slo"
TARGETS = {"tpot": 1.5, "ttft": 1.3, "itl_p99_over_idle_tpot": 2.0}
THROUGHPUT_TOLERANCE = 0.10  # no-chat background tok/s with the target on at most this share below the target off
DEFAULTS = {"model": "smollm2-135m-instruct", "batch_size": 32, "background_tokens": 512, "interactive_tokens": 64,
            "joining_tokens": 16, "chats": 5, "quiet_s": 2.0, "after_s": 30.0, "slo": 1.5, "threads": None,
            "ready_timeout_s": 120.0}
SMOKE = {"model": "random:tiny", "batch_size": 8, "background_tokens": 256, "interactive_tokens": 8,
         "joining_tokens": 4, "chats": 2, "quiet_s": 0.3, "after_s": 0.5, "slo": 1.5, "threads": 1,
         "ready_timeout_s": 20.0}


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


async def _drain(stream, times: list[float]) -> None:
    async for out in stream:
        if out.token_id is not None:
            times.append(time.perf_counter())


async def _interactive(engine: Engine, tokens: int, seen: list) -> dict:
    """One chat turn of `tokens` tokens; `seen` gets a stats sample at each token but the last (the chat is then
    still in the batch, so a short chat is sampled too, however fast its steps)."""
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    start = time.perf_counter()
    times, waited = [], None
    async for out in engine.generate(QUESTION, params, priority=Priority.INTERACTIVE):
        if out.token_id is not None:
            times.append(time.perf_counter())
            waited = out.engine_step - out.arrival_step if waited is None else waited
            if len(times) < tokens:
                seen.append(_sample(engine))
    return {"start": start, "end": times[-1], "ttft_ms": (times[0] - start) * 1000,
            "tpot_ms": (times[-1] - times[0]) * 1000 / max(1, len(times) - 1),
            "itl_ms": [(b - a) * 1000 for a, b in zip(times, times[1:])], "steps_before_first_token": waited}


async def _watch(engine: Engine, seen: list, stop: asyncio.Event) -> None:
    """Sample the SLO stats while a chat decodes (every 20 ms)."""
    while not stop.is_set():
        seen.append(_sample(engine))
        await asyncio.sleep(0.02)


def _sample(engine: Engine) -> dict:
    s = engine.stats()
    return {"cap": s.slo_background_cap, "target_ms": s.slo_target_step_ms, "predicted_ms": s.predicted_step_ms,
            "rows": len(s.rows), "background_rows": sum(1 for r in s.rows if r.priority != "interactive")}


def _warm_up(engine: Engine) -> None:
    """The same for every scenario: short greedy generations at 1 and 4 rows (the cost model's row counts)."""
    engine.generate_batch(["warm up"], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
    engine.generate_batch([f"warm up {i}" for i in range(4)], SamplingParams(max_tokens=6, temperature=0,
                                                                              ignore_eos=True))


def _rate(times: list[float], windows: list[tuple[float, float]]) -> float | None:
    """Tokens per second of `times` inside `windows` (tokens/s; None: no time)."""
    span = sum(b - a for a, b in windows)
    if span <= 0:
        return None
    ts = np.asarray(times)
    return float(sum(((ts >= a) & (ts < b)).sum() for a, b in windows) / span)


async def _scenario(loaded, spec: dict, args, pools: dict) -> dict:
    config = EngineConfig(model=loaded.name, max_batch_size=args.batch_size, max_preemptions=spec["max_preemptions"],
                          max_background_prefill_tokens=spec["budget"], interactive_tpot_slo=spec["slo"])
    engine = Engine(config, loaded=loaded).start()
    bg_times: list[float] = []
    tasks: list[asyncio.Task] = []
    stop = asyncio.Event()
    try:
        await asyncio.to_thread(_warm_up, engine)
        if spec["kind"] == "busy":
            params = SamplingParams(max_tokens=args.background_tokens, temperature=0, ignore_eos=True)
            tasks = [asyncio.create_task(_drain(engine.generate(p, params, priority=Priority.BATCH), bg_times))
                     for p in pools["busy"]]
        elif spec["kind"] == "joining":
            tasks = [asyncio.create_task(_feed(engine, pools["joining"], 2 * args.batch_size,
                                               args.joining_tokens, bg_times, stop))]
        t0 = time.perf_counter()
        while spec["kind"] != "idle" and engine.stats().batch_size < args.batch_size \
                and engine.stats().counters.get("num_requests_finished", 0) <= 5 + 1:  # warm-up's 5, then 1 more
            await asyncio.sleep(0.05)
        ready_wait_s = None
        if spec["slo"] is not None:
            t1 = time.perf_counter()
            while engine.stats().step_cost_coefficients is None and time.perf_counter() - t1 < args.ready_timeout_s:
                await asyncio.sleep(0.05)
            ready_wait_s = time.perf_counter() - t1
        fill_s = time.perf_counter() - t0
        coefficients = engine.stats().step_cost_coefficients
        chats, quiet, active, seen = [], [], [], []
        base = engine.stats().counters
        for _ in range(args.chats):
            if spec["kind"] != "idle":
                q0 = time.perf_counter()
                await asyncio.sleep(args.quiet_s)
                quiet.append((q0, time.perf_counter()))
            watch_stop = asyncio.Event()
            watcher = asyncio.create_task(_watch(engine, seen, watch_stop))
            chat = await _interactive(engine, args.interactive_tokens, seen)
            watch_stop.set()
            await watcher
            chats.append(chat)
            active.append((chat["start"], chat["end"]))
        stats = engine.stats()
        counters = {k: stats.counters.get(k, 0) - base.get(k, 0)
                    for k in ("num_preemptions", "num_swap_outs", "num_swap_ins", "num_slo_swap_outs",
                              "num_slo_held_back", "num_decode_steps", "num_prompt_tokens",
                              "num_prefix_cache_queries", "num_prefix_cache_hits", "num_prefill_forwards")}
        after, after_prompt_tokens = [], None
        if spec["kind"] != "idle":
            a0, p0 = time.perf_counter(), engine.stats().counters.get("num_prompt_tokens", 0)
            await asyncio.sleep(args.after_s)
            after.append((a0, time.perf_counter()))
            after_prompt_tokens = engine.stats().counters.get("num_prompt_tokens", 0) - p0
        itl = [x for c in chats for x in c["itl_ms"]]
        ttft, tpot = [c["ttft_ms"] for c in chats], [c["tpot_ms"] for c in chats]
        caps = [s["cap"] for s in seen if s["cap"] is not None]
        row = {
            "ttft_ms": {"median": _pct(ttft, 50), "p99": _pct(ttft, 99), "all": ttft},
            "tpot_ms": {"median": _pct(tpot, 50), "p99": _pct(tpot, 99), "all": tpot},
            "itl_ms_p99": _pct(itl, 99), "itl_ms_max": max(itl) if itl else None,
            "steps_before_first_token": [c["steps_before_first_token"] for c in chats],
            "background_tok_s_no_chat": _rate(bg_times, after) if after else None,
            "background_total_tok_s_no_chat": (_rate(bg_times, after) + after_prompt_tokens / (after[0][1] - after[0][0])
                                               if after else None),
            "background_tok_s_between_chats": _rate(bg_times, quiet) if quiet else None,
            "background_tok_s_during_chat": _rate(bg_times, active) if spec["kind"] != "idle" else None,
            "batch_rows_during_chat_median": _pct([s["rows"] for s in seen], 50),
            "background_rows_during_chat_median": _pct([s["background_rows"] for s in seen], 50),
            "slo_background_cap": {"min": min(caps), "median": _pct(caps, 50), "max": max(caps)} if caps else None,
            "slo_target_step_ms_median": _pct([s["target_ms"] for s in seen if s["target_ms"] is not None], 50),
            "predicted_step_ms_median": _pct([s["predicted_ms"] for s in seen if s["predicted_ms"] is not None], 50),
            "step_cost_coefficients": list(coefficients) if coefficients else None,
            "step_cost_coefficients_end": list(stats.step_cost_coefficients) if stats.step_cost_coefficients else None,
            "slo_ready_wait_s": ready_wait_s, "fill_s": fill_s, "counters_during_chats": counters,
            "slo": spec["slo"], "max_preemptions": spec["max_preemptions"], "background_budget": spec["budget"],
        }
        return row
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        engine.shutdown()


async def _feed(engine: Engine, pool: list, in_flight: int, tokens: int, times: list, stop: asyncio.Event) -> None:
    """A job that never ends: keeps `in_flight` background requests running, cycling through `pool`, each request
    distinct (`_distinct`)."""
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    running: set[asyncio.Task] = set()
    i = 0
    try:
        while not stop.is_set():
            while len(running) < in_flight:
                running.add(asyncio.create_task(_drain(engine.generate(_distinct(pool[i % len(pool)], i), params,
                                                                       priority=Priority.BATCH), times)))
                i += 1
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            running = set(running)
    finally:
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)


def _distinct(prompt, i: int):
    """The job's `i`-th request: its pool prompt after a request number, so that no two requests share more
    than the chat template's system prompt. When the pool's prompts recurred, the prefix cache served most of
    them (target off, which gets further through the pool: 84% of its prompt tokens, 2026-12-04) and the
    scenarios compared cache hits, not the target."""
    if isinstance(prompt, str):
        return f"Request {i}. {prompt}"
    first, *rest = prompt
    return [{**first, "content": f"Request {i}. {first['content']}"}, *rest]


def _scenarios(args, budget: int) -> dict:
    x = args.slo
    runs = {
        "idle": {"kind": "idle", "slo": None, "max_preemptions": 3, "budget": budget},
        "busy, target off": {"kind": "busy", "slo": None, "max_preemptions": 3, "budget": budget},
        f"busy, target {x:g}": {"kind": "busy", "slo": x, "max_preemptions": 3, "budget": budget},
        "joining, target off": {"kind": "joining", "slo": None, "max_preemptions": 3, "budget": budget},
        f"joining, target {x:g}": {"kind": "joining", "slo": x, "max_preemptions": 3, "budget": budget},
    }
    if args.legacy:
        runs["busy, no preemption"] = {"kind": "busy", "slo": None, "max_preemptions": 0, "budget": budget}
        runs["joining, no background budget"] = {"kind": "joining", "slo": None, "max_preemptions": 3, "budget": None}
    return runs


def _prompts(args, loaded) -> dict:
    if args.smoke:  # no dataset: synthetic prompts of varied lengths
        return {"busy": [" ".join(["busy"] * (8 + 5 * i)) for i in range(args.batch_size)],
                "joining": [" ".join(["join"] * (4 + 17 * i % 120)) for i in range(3 * args.batch_size)]}
    from .sharegpt import load_samples
    return {"busy": [[{"role": "user", "content": s.prompt}]
                     for s in load_samples(args.batch_size, seed=1, tokenizer=loaded.tokenizer, max_input=256)],
            "joining": [[{"role": "user", "content": s.prompt}]
                        for s in load_samples(3 * args.batch_size, seed=2, tokenizer=loaded.tokenizer,
                                              max_input=1024)]}


def check_targets(result: dict) -> dict:
    """Each target-on (and -off) scenario against the idle reference and the target-off twin."""
    sc = result["scenarios"]
    idle = sc.get("idle")
    checks = {}
    if not idle:
        return checks
    i_ttft, i_tpot = idle["ttft_ms"]["median"], idle["tpot_ms"]["median"]
    for name, row in sc.items():
        if name == "idle":
            continue
        c = {"tpot_over_idle": row["tpot_ms"]["median"] / i_tpot, "ttft_over_idle": row["ttft_ms"]["median"] / i_ttft,
             "itl_p99_over_idle_tpot": row["itl_ms_p99"] / i_tpot}
        c["tpot_ok"] = c["tpot_over_idle"] <= TARGETS["tpot"]
        c["ttft_ok"] = c["ttft_over_idle"] <= TARGETS["ttft"]
        c["itl_ok"] = c["itl_p99_over_idle_tpot"] <= TARGETS["itl_p99_over_idle_tpot"]
        twin = sc.get(name.split(",")[0] + ", target off")
        key = "background_total_tok_s_no_chat" if "background_total_tok_s_no_chat" in row else "background_tok_s_no_chat"
        if row["slo"] is not None and twin and twin.get(key) and row.get(key):
            c["no_chat_throughput_over_off"] = row[key] / twin[key]
            c["no_chat_throughput_ok"] = c["no_chat_throughput_over_off"] >= 1 - THROUGHPUT_TOLERANCE
            if twin["background_tok_s_during_chat"] and row["background_tok_s_during_chat"] is not None:
                c["during_chat_throughput_over_off"] = (row["background_tok_s_during_chat"]
                                                        / twin["background_tok_s_during_chat"])
        checks[name] = c
    return checks


def _cap(cap) -> str:
    return "–" if cap is None else f"{cap['min']}-{cap['max']}"


def _ms(x) -> str:
    return "–" if x is None else f"{x:,.1f}"


def markdown(result: dict, path: str) -> str:
    """The docs/benchmarks.md table of one results JSON."""
    a = result["args"]
    reduced = f"**Reduced run** ({result['tag']}; noisy, not the full benchmark). " if result.get("tag") else ""
    lines = [f"{reduced}"
             f"{result['date']}, {result['machine']}; {result['model']}, {result['torch_threads']} torch threads; "
             f"JSON: `{path}`; command `{result['command']}`. {a['chats']} chats of {a['interactive_tokens']} greedy "
             f"tokens per scenario, each after a {a['quiet_s']:g} s quiet window, then {a.get('after_s', 0):g} s with "
             f"no chat; {a['batch_size']} background rows "
             f"of up to {a['background_tokens']} tokens (busy) or a job of {a['joining_tokens']}-token requests kept "
             f"2 x {a['batch_size']} deep (joining). Target = `interactive_tpot_slo`. Background tok/s: the "
             "background's total (prompt prefilled + output) and output tokens per second in the window after the "
             "chats (no chat), its output tokens per second in the quiet windows between chats and while the chats "
             "ran.", "",
             "| scenario | TTFT median / p99 | TPOT median / p99 | ITL p99 / max | bg tok/s no chat: total / output; "
             "between chats | "
             "bg tok/s, chat | rows in chat, all / bg | cap (min-max) | target / predicted step | SLO swap-outs "
             "| held back |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in result["scenarios"].items():
        cap = r["slo_background_cap"]
        c = r["counters_during_chats"]
        lines.append(
            f"| {name} | {_ms(r['ttft_ms']['median'])} / {_ms(r['ttft_ms']['p99'])} ms "
            f"| {_ms(r['tpot_ms']['median'])} / {_ms(r['tpot_ms']['p99'])} ms "
            f"| {_ms(r['itl_ms_p99'])} / {_ms(r['itl_ms_max'])} ms "
            f"| {_ms(r.get('background_total_tok_s_no_chat'))} / {_ms(r['background_tok_s_no_chat'])} "
            f"/ {_ms(r.get('background_tok_s_between_chats'))} "
            f"| {_ms(r['background_tok_s_during_chat'])} "
            f"| {_ms(r.get('batch_rows_during_chat_median'))} / {_ms(r['background_rows_during_chat_median'])} "
            f"| {_cap(cap)} "
            f"| {_ms(r['slo_target_step_ms_median'])} / {_ms(r['predicted_step_ms_median'])} ms "
            f"| {c['num_slo_swap_outs']} | {c['num_slo_held_back']} |")
    lines += ["", f"Targets against idle (medians): TPOT <= {TARGETS['tpot']}x, TTFT <= {TARGETS['ttft']}x, "
              f"ITL p99 <= {TARGETS['itl_p99_over_idle_tpot']}x idle TPOT; no-chat background throughput (total "
              f"tokens/s) with the target at most {THROUGHPUT_TOLERANCE:.0%} below the target off.", "",
              "| scenario | TPOT / idle | TTFT / idle | ITL p99 / idle TPOT | no-chat bg total tok/s, on / off | "
              "bg tok/s in chat, on / off |", "| --- | --- | --- | --- | --- | --- |"]
    for name, c in result["checks"].items():
        def mark(v, ok):
            return f"{v:.2f}x {'✓' if ok else '✗'}"
        nc = c.get("no_chat_throughput_over_off")
        dc = c.get("during_chat_throughput_over_off")
        lines.append(f"| {name} | {mark(c['tpot_over_idle'], c['tpot_ok'])} "
                     f"| {mark(c['ttft_over_idle'], c['ttft_ok'])} "
                     f"| {mark(c['itl_p99_over_idle_tpot'], c['itl_ok'])} "
                     f"| {'–' if nc is None else mark(nc, c['no_chat_throughput_ok'])} "
                     f"| {'–' if dc is None else f'{dc:.2f}x'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help=f"default {DEFAULTS['model']}")
    ap.add_argument("--batch-size", type=int, help="background rows (default 32)")
    ap.add_argument("--background-tokens", type=int, help="busy background requests' output tokens (default 512; "
                    "cancelled when the chats are done)")
    ap.add_argument("--interactive-tokens", type=int, help="each chat's output tokens (default 64)")
    ap.add_argument("--joining-tokens", type=int, help="output tokens of the joining job's requests (default 16)")
    ap.add_argument("--chats", type=int, help="chats per scenario, one after another (default 5)")
    ap.add_argument("--quiet-s", type=float, help="no-chat window before each chat (s; default 2)")
    ap.add_argument("--after-s", type=float, help="no-chat window after the last chat, where the background's "
                    "no-chat throughput is measured (s; default 30)")
    ap.add_argument("--slo", type=float, help="interactive_tpot_slo of the target-on scenarios (default 1.5)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's; smoke 1)")
    ap.add_argument("--ready-timeout-s", type=float, help="longest wait for the step-cost model (s; default 120)")
    ap.add_argument("--scenarios", help="semicolon-separated scenario names to run (they contain commas; "
                                        "default: all), e.g. 'idle;joining, target 1.5'")
    ap.add_argument("--legacy", action="store_true", help="also the no-preemption and no-background-budget runs")
    ap.add_argument("--tag", help="results file suffix; marks the docs table as a reduced run")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--smoke", action="store_true", help="random:tiny, 8 background rows, 2 chats (seconds)")
    ap.add_argument("--update-docs", action="store_true", help=f"replace the '{DOCS_SECTION}' section of "
                    "docs/benchmarks.md with this run's table")
    ap.add_argument("--docs-from", type=Path, help="only regenerate the docs table from this results JSON")
    args = ap.parse_args(argv)
    if args.docs_from:
        result = json.loads(args.docs_from.read_text())
        print(replace_section(DOCS_SECTION, markdown(result, relative(args.docs_from))))
        return 0
    for key, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    pools = _prompts(args, loaded)
    runs = _scenarios(args, EngineConfig().max_background_prefill_tokens)
    if args.scenarios:
        wanted = [s.strip() for s in args.scenarios.split(";")]
        unknown = sorted(set(wanted) - set(runs))
        if unknown:
            ap.error(f"--scenarios: unknown {unknown}; choose from {list(runs)}")
        runs = {k: v for k, v in runs.items() if k in wanted}
    result = {"date": dt.date.today().isoformat(), "machine": machine(), "model": args.model,
              "device": "cuda" if loaded.device.type == "cuda" else "cpu", "torch_threads": torch.get_num_threads(),
              "tag": "smoke" if args.smoke else args.tag,
              "command": "python -m benchmarks.priority " + " ".join(argv if argv is not None else sys.argv[1:]),
              "args": {k: getattr(args, k) for k in DEFAULTS}, "scenarios": {}}
    for name, spec in runs.items():
        t = time.perf_counter()
        row = asyncio.run(_scenario(loaded, spec, args, pools))
        row["wall_s"] = time.perf_counter() - t
        result["scenarios"][name] = row
        cap = row["slo_background_cap"]
        print(f"{name:24s} TTFT {_ms(row['ttft_ms']['median']):>8} / {_ms(row['ttft_ms']['p99']):>8} ms  "
              f"TPOT {_ms(row['tpot_ms']['median']):>6} / {_ms(row['tpot_ms']['p99']):>6} ms  "
              f"ITL p99 {_ms(row['itl_ms_p99']):>7} ms  bg tok/s {_ms(row['background_total_tok_s_no_chat'])} total, {_ms(row['background_tok_s_no_chat'])} output no chat, "
              f"{_ms(row['background_tok_s_during_chat'])} in chat  cap {cap}  "
              f"pred {_ms(row['predicted_step_ms_median'])} ms  target {_ms(row['slo_target_step_ms_median'])} ms  "
              f"slo swap-outs {row['counters_during_chats']['num_slo_swap_outs']}  "
              f"coef {row['step_cost_coefficients']}  ({row['wall_s']:.0f} s)", flush=True)
    result["checks"] = check_targets(result)
    for name, c in result["checks"].items():
        print(f"{name:24s} " + "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in c.items()), flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"-{result['tag']}" if result["tag"] else ""
    path = args.out_dir / f"{result['date']}-{result['device']}-priority{suffix}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    if args.update_docs:
        print(f"updated {replace_section(DOCS_SECTION, markdown(result, relative(path)))}")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
