"""TTFT of chats that arrive at random moments while a joining job runs, and the job's prefill meanwhile.

    python -m benchmarks.chat_arrival                    # SmolLM2-135M, 1 thread, 25 chats, target 1.5
    python -m benchmarks.chat_arrival --smoke --out-dir D  # random:tiny, seconds (tests/test_chat_arrival_smoke.py)

`benchmarks.priority` sends each chat after a fixed quiet window that follows the previous chat, so its chats
arrive while the engine is catching up on what the last chat held back. Here one-token chats (TTFT only) arrive
after a random pause of `--min-s` to `--max-s` seconds (seeded), so they also land in the middle of a long
background prefill: what they wait for there is the forward in flight up to its next decoder layer
(`backend/step_abort.py`), and the work they throw away is that forward (`backend/sched_slo.py`, "Between
chats"). The job is `benchmarks.priority`'s joining job (distinct ShareGPT prompts up to 1,024 tokens, 16
output tokens each, kept 2 x `--batch-size` deep). Reports the chats' TTFT (median, p90, max; ms), the
background forwards stopped for them, and the job's prompt tokens prefilled and output tokens per second over
the run. Writes `<out-dir>/<date>-<device>-chat-arrival[-<tag>|-smoke].json`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from backend import Engine, EngineConfig, Priority, SamplingParams, load_model

from . import priority
from .core import RESULTS, machine

DEFAULTS = {"model": "smollm2-135m-instruct", "batch_size": 32, "chats": 25, "min_s": 2.0, "max_s": 6.0,
            "slo": 1.5, "threads": 1}
SMOKE = {"model": "random:tiny", "batch_size": 8, "chats": 3, "min_s": 0.05, "max_s": 0.2, "slo": 1.5, "threads": 1}


async def run(loaded, args, pool: list) -> dict:
    """One engine: the job, then `args.chats` one-token chats at random moments. Returns the chats' TTFT
    (median, p90, max, all; ms), the run's span (s), counter deltas (forwards stopped, prompt tokens, prefill
    forwards, SLO swap-outs) and the job's prompt and output rates (tokens/s). Raises what the engine raises."""
    engine = Engine(EngineConfig(model=loaded.name, max_batch_size=args.batch_size, interactive_tpot_slo=args.slo),
                    loaded=loaded).start()
    stop, out_times = asyncio.Event(), []
    feed = None
    try:
        await asyncio.to_thread(priority._warm_up, engine)
        feed = asyncio.create_task(priority._feed(engine, pool, 2 * args.batch_size, 16, out_times, stop))
        while engine.stats().batch_size < args.batch_size:
            await asyncio.sleep(0.05)
        while args.slo is not None and engine.stats().step_cost_coefficients is None:
            await asyncio.sleep(0.05)
        rng, params = random.Random(0), SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
        base, t0, ttft = engine.stats().counters, time.perf_counter(), []
        for _ in range(args.chats):
            await asyncio.sleep(rng.uniform(args.min_s, args.max_s))
            start = time.perf_counter()
            async for out in engine.generate(priority.QUESTION, params, priority=Priority.INTERACTIVE):
                if out.token_id is not None:
                    ttft.append((time.perf_counter() - start) * 1000)
        span, counters = time.perf_counter() - t0, engine.stats().counters
        delta = {k: counters.get(k, 0) - base.get(k, 0) for k in ("num_aborted_forwards", "num_prompt_tokens",
                                                                    "num_prefill_forwards", "num_slo_swap_outs")}
        return {"ttft_ms": {"median": float(np.median(ttft)), "p90": float(np.percentile(ttft, 90)),
                            "max": max(ttft), "all": ttft},
                "span_s": span, "counters": delta,
                "background_prompt_tok_s": delta["num_prompt_tokens"] / span,
                "background_output_tok_s": sum(1 for t in out_times if t >= t0) / span}
    finally:
        stop.set()
        if feed is not None:
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)
        engine.shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help=f"default {DEFAULTS['model']}")
    ap.add_argument("--batch-size", type=int, help="rows; the job keeps twice as many requests (default 32)")
    ap.add_argument("--chats", type=int, help="one-token chats (default 25)")
    ap.add_argument("--min-s", type=float, help="shortest pause before a chat (s; default 2)")
    ap.add_argument("--max-s", type=float, help="longest pause before a chat (s; default 6)")
    ap.add_argument("--slo", type=float, help="interactive_tpot_slo (default 1.5)")
    ap.add_argument("--threads", type=int, help="torch threads (default 1)")
    ap.add_argument("--tag", help="results file suffix")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--smoke", action="store_true", help="random:tiny, 8 rows, 3 chats (seconds)")
    args = ap.parse_args(argv)
    for key, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    args.smoke = args.smoke or args.model.startswith("random:")
    pool = priority._prompts(args, loaded)["joining"]
    result = {"date": dt.date.today().isoformat(), "machine": machine(), "model": args.model,
              "device": "cuda" if loaded.device.type == "cuda" else "cpu", "torch_threads": torch.get_num_threads(),
              "tag": "smoke" if args.model == SMOKE["model"] else args.tag,
              "command": "python -m benchmarks.chat_arrival " + " ".join(argv if argv is not None else sys.argv[1:]),
              "args": {k: getattr(args, k) for k in DEFAULTS}}
    result.update(asyncio.run(run(loaded, args, pool)))
    t = result["ttft_ms"]
    print(f"TTFT median {t['median']:.0f} p90 {t['p90']:.0f} max {t['max']:.0f} ms; forwards stopped "
          f"{result['counters']['num_aborted_forwards']}; background {result['background_prompt_tok_s']:.1f} prompt "
          f"tok/s, {result['background_output_tok_s']:.1f} output tok/s over {result['span_s']:.0f} s", flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"-{result['tag']}" if result["tag"] else ""
    path = args.out_dir / f"{result['date']}-{result['device']}-chat-arrival{suffix}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
