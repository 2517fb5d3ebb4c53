"""Decode step time per compile mode, compile time per bucket, and the first answer's TTFT after a cold start.

    python -m benchmarks.compile_modes [--model smollm2-135m-instruct] [--rows 1,8,16,32] [--threads 1]
        [--min-len 300] [--max-len 600] [--steps 5] [--rounds 2] [--no-ttft] [--update-docs]
    python -m benchmarks.compile_modes --render benchmarks/results/<date>-cpu-compile-modes.json --update-docs

For each batch size B (a power of two, so B is its own row bucket) a running batch is built the way the engine
does (`ModelRunner.new_batch`, one `insert` per row, random K/V, contexts `--min-len`..`--max-len` tokens, as
`decode_profile.py`), then the engine's own decode step (`[B, 1]` input ids, `ModelRunner.decode`, greedy
`sample`, `.tolist()`) is timed on three paths, alternated in `--rounds` rounds of `--steps` steps (median):

- **window**: `compile="off"`, the eager step over the live window `[B, S+1]`;
- **static eager**: the static step (`backend/static_step.py`: the buffers' whole width T) run eagerly;
- **inductor**: the static step compiled (`compile="inductor"`); its bucket is compiled first (in the
  background thread the engine uses, waited for here) with a fresh inductor cache directory, so the compile
  time is a cold one.

Then, unless `--no-ttft`, two fresh processes each start an engine (`compile="off"`, then `"inductor"`) and
send one ~400-token prompt for 24 tokens: the first answer's TTFT and its inter-token gaps while the bucket
compiles in the background; with `inductor`, once the compile is done, a second answer of the same length
(its steps compiled). Writes `benchmarks/results/<date>-cpu-compile-modes.json`; `--update-docs` puts
the Markdown into the `compile-modes` section of `docs/benchmarks.md`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .core import RESULTS, machine
from .report import run_and_report

SECTION = "compile-modes"


def _step_ms(runner, batch, last, st, steps: int) -> tuple[float, list[int]]:
    from .decode_profile import decode_step

    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        last = decode_step(runner, batch, last, st)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times), last


def run_steps(args: argparse.Namespace) -> list[dict]:
    """Step times per batch size and path, and each bucket's compile time."""
    import torch

    from backend.config import SamplingParams
    from backend.decode_compile import STATIC_EAGER, StaticDecoder
    from backend.models import load_model
    from backend.runner import ModelRunner
    from backend.sampler import SamplingTensors

    from .decode_profile import build_batch

    loaded = load_model(args.model, device="cpu")
    runner = ModelRunner(loaded.model, loaded.device, compile="inductor")
    inductor = runner.static
    static_eager = StaticDecoder(loaded.model, STATIC_EAGER, runner.abort)
    paths = {"window": None, "static_eager": static_eager, "inductor": inductor}
    out = []
    with torch.inference_mode():
        for rows in args.rows:
            rnd = random.Random(args.seed + rows)
            lengths = [rnd.randint(args.min_len, args.max_len) for _ in range(rows)]
            st = SamplingTensors.build([SamplingParams(temperature=0)] * rows, runner.device)
            batch, last = build_batch(runner, rows, lengths, args.seed)
            runner.static = inductor
            windows_before = inductor.num_window_steps
            _, last = _step_ms(runner, batch, last, st, 1)  # requests the compile; runs on the window path
            key = (rows, batch.cap_seq)
            load_before = os.getloadavg()[0]
            inductor.wait_compiled()
            compile_s = inductor.compile_seconds.get(key)
            row = {"rows": rows, "width": batch.cap_seq, "lengths": [min(lengths), max(lengths),
                   round(sum(lengths) / rows)], "compile_s": compile_s,
                   "compile_error": inductor.compile_errors.get(key), "load_during_compile": load_before}
            times: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(args.rounds):
                for name, decoder in paths.items():
                    if name == "inductor" and compile_s is None:
                        continue
                    runner.static = decoder
                    _, last = _step_ms(runner, batch, last, st, 1)  # warm-up
                    ms, last = _step_ms(runner, batch, last, st, args.steps)
                    times[name].append(ms)
            assert batch.cap_seq == key[1], "the buffers were reallocated mid-run: more slack needed"
            row["window_fallbacks"] = inductor.num_window_steps - windows_before - 1
            row.update({f"{name}_ms": min(v) if v else None for name, v in times.items()})
            row["load"] = os.getloadavg()[0]
            print(json.dumps(row), flush=True)
            out.append(row)
    runner.static = inductor
    runner.close()
    return out


TTFT_CHILD = """
import asyncio, json, os, time, torch
torch.set_num_threads({threads})
from backend import Engine, EngineConfig, SamplingParams
t0 = time.perf_counter()
engine = Engine(EngineConfig(model={model!r}, device="cpu", compile={mode!r}, max_batch_size=8)).start()
ready = time.perf_counter()
words = ("the quick brown fox jumps over a lazy dog while seven wizards quietly box " * 40).split()
params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)

async def answer(prompt):
    sent, times = time.perf_counter(), []
    async for out in engine.generate(prompt, params):
        if out.token_id is not None:
            times.append(time.perf_counter())
    return 1000 * (times[0] - sent), [1000 * (b - a) for a, b in zip(times, times[1:])]

static = engine._core.runner.static
ttft, itl = asyncio.run(answer(" ".join(words[:380])))
res = dict(mode={mode!r}, load_s=ready - t0, ttft_ms=ttft, itl_ms=itl, load=os.getloadavg()[0],
           static_steps=static.num_static_steps if static else 0)
if static is not None:  # the bucket compiles in the background meanwhile: wait, then a second answer
    t1 = time.perf_counter()
    static.wait_compiled(900)
    res.update(compile_wait_s=time.perf_counter() - t1, compile_s=dict((str(k), v) for k, v in
               static.compile_seconds.items()), compile_errors=dict((str(k), v) for k, v in static.compile_errors.items()))
    before = static.num_static_steps
    ttft2, itl2 = asyncio.run(answer(" ".join(words[1:381])))  # another prompt of the same length: no cache hit
    res.update(second_ttft_ms=ttft2, second_itl_ms=itl2, second_static_steps=static.num_static_steps - before)
print("RESULT " + json.dumps(res), flush=True)
os._exit(0)
"""


def run_ttft(args: argparse.Namespace) -> list[dict]:
    """The first answer after a cold start, `off` then `inductor`, each in a fresh process."""
    out = []
    for mode in ("off", "inductor"):
        code = TTFT_CHILD.format(threads=args.threads or 1, model=args.model, mode=mode)
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="baton-inductor-"))
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                              cwd=Path(__file__).resolve().parents[1], timeout=900)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"the {mode} run failed:\n{proc.stderr[-3000:]}")
        out.append(json.loads(line[len("RESULT "):]))
        print(line, flush=True)
    return out


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    import torch

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="baton-inductor-")  # a cold compile
    load = os.getloadavg()
    result = {"date": str(dt.date.today()), "device": "cpu", "machine": machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "model": args.model, "argv": argv, "load_start": load,
              "steps": args.steps, "rounds": args.rounds}
    result["buckets"] = run_steps(args)
    result["ttft"] = [] if args.no_ttft else run_ttft(args)
    result["load_end"] = os.getloadavg()
    return result


def _ms(x) -> str:
    return "-" if x is None else f"{x:,.1f}"


def markdown(res: dict) -> str:
    lines = [f"{res['machine']}; {res['threads']} thread(s), `{res['model']}`, fp32; "
             f"{res['date']}; `uptime` load {res['load_start'][0]:.1f} at the start, "
             f"{res['load_end'][0]:.1f} at the end (`{res['json']}`).",
             "",
             f"Decode step, ms (the best of {res['rounds']} rounds' medians of {res['steps']} steps; the three "
             "paths alternated on one batch):",
             "",
             "| rows | contexts (tokens) | buffer width T | window (`off`) | static eager | inductor | inductor vs window "
             "| compile (s) | load during compile |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for b in res["buckets"]:
        ratio = (f"{b['window_ms'] / b['inductor_ms']:.2f}x" if b.get("inductor_ms") and b.get("window_ms")
                 else (b.get("compile_error") or "-"))
        lo, hi, mean = b["lengths"]
        lines.append(f"| {b['rows']} | {lo}-{hi} (mean {mean}) | {b['width']} | {_ms(b['window_ms'])} | "
                     f"{_ms(b['static_eager_ms'])} | {_ms(b.get('inductor_ms'))} | {ratio} | "
                     f"{_ms(b['compile_s'])} | {b['load_during_compile']:.1f} |")
    if res["ttft"]:
        lines += ["", "The first answer after a cold start (a fresh process and inductor cache; a ~400-token prompt, "
                  "24 greedy tokens, max_batch_size 8):", "",
                  "| compile | model load + engine start (s) | TTFT (ms) | inter-token gap, median / max (ms) "
                  "| compiled steps | load |", "| --- | --- | --- | --- | --- | --- |"]
        for t in res["ttft"]:
            itl = t["itl_ms"]
            lines.append(f"| `{t['mode']}` | {t['load_s']:.1f} | {t['ttft_ms']:,.0f} | "
                         f"{statistics.median(itl):,.0f} / {max(itl):,.0f} | {t['static_steps']} | {t['load']:.1f} |")
            if "second_itl_ms" in t:
                itl = t["second_itl_ms"]
                lines.append(f"| `{t['mode']}`, the next answer once its bucket compiled ({t['compile_wait_s']:.0f} s "
                             f"later) | | {t['second_ttft_ms']:,.0f} | {statistics.median(itl):,.0f} / "
                             f"{max(itl):,.0f} | {t['second_static_steps']} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rows", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 16, 32])
    p.add_argument("--min-len", type=int, default=300)
    p.add_argument("--max-len", type=int, default=600)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    p.add_argument("--no-ttft", action="store_true", help="skip the cold-start runs")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--render", type=Path, default=None, help="print (and --update-docs) a saved result instead")
    p.add_argument("--update-docs", action="store_true")
    p.add_argument("--smoke", action="store_true", help="name the result -smoke (a quick check)")
    p.add_argument("--tag", default=None)
    args = p.parse_args(argv)
    return run_and_report(args, argv, "compile-modes", SECTION, run, markdown)


if __name__ == "__main__":
    sys.exit(main())
