"""Interactive latency with a background job filling the batch, versus an idle engine.

    python -m benchmarks.priority [--model smollm2-135m-instruct] [--batch-size 32] [--background-tokens 128]

Scenarios, each on a fresh engine over one loaded model:
- `idle`: the interactive request alone.
- `busy, preemption`: `--batch-size` background requests (ShareGPT prompts, `Priority.BATCH`) fill the batch,
  then the interactive request arrives: a background row is swapped out to host memory and the interactive
  request is prefilled at once (BATON §4.3).
- `busy, no preemption` (`max_preemptions=0`): the same, but the interactive request waits for a free row.
- `joining, background budget N` / `joining, no background budget`: a job of 3 x `--batch-size` background
  requests with short outputs (`--joining-tokens`) and prompts up to 1,024 tokens keeps finishing rows and
  prefilling newcomers while the interactive request decodes, with `max_background_prefill_tokens` at its
  default and switched off (None): the background prompts' prefills between the interactive request's tokens
  are what its ITL shows.

Reports TTFT, TPOT, ITL p99 and max of the interactive request (ms) and the engine steps between its arrival
and its first token; writes `benchmarks/results/<date>-<device>-priority.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import time

import numpy as np

from backend import Engine, EngineConfig, Priority, SamplingParams, load_model

from .core import RESULTS, machine
from .sharegpt import load_samples

QUESTION = [{"role": "user", "content": "Give me three tips for writing clear documentation."}]


async def _interactive(engine: Engine, tokens: int) -> dict:
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    start = time.perf_counter()
    times, waited = [], None
    async for out in engine.generate(QUESTION, params, priority=Priority.INTERACTIVE):
        if out.token_id is not None:
            times.append(time.perf_counter())
            waited = out.engine_step - out.arrival_step if waited is None else waited
    ttft = (times[0] - start) * 1000
    tpot = (times[-1] - times[0]) * 1000 / (len(times) - 1)
    itl = sorted((b - a) * 1000 for a, b in zip(times, times[1:]))
    return {"ttft_ms": ttft, "tpot_ms": tpot, "itl_ms_p99": float(np.percentile(itl, 99)), "itl_ms_max": itl[-1],
            "steps_before_first_token": waited, "output_tokens": len(times)}


async def _scenario(loaded, background: list, batch_size: int, bg_tokens: int, fg_tokens: int,
                    max_preemptions: int, background_budget: int | None = 256) -> dict:
    config = EngineConfig(model=loaded.name, max_batch_size=batch_size, max_preemptions=max_preemptions,
                          max_background_prefill_tokens=background_budget)
    engine = Engine(config, loaded=loaded).start()
    try:
        await asyncio.to_thread(engine.generate_batch, ["warm up"], SamplingParams(max_tokens=4))
        params = SamplingParams(max_tokens=bg_tokens, temperature=0, ignore_eos=True)
        tasks = [asyncio.create_task(_drain(engine.generate(p, params, priority=Priority.BATCH)))
                 for p in background]
        full = min(batch_size, len(background))  # wait for a full batch, or for a job's rows to start turning over
        while background and engine.stats().batch_size < full \
                and not engine.stats().counters.get("num_requests_finished", 0) > 1:
            await asyncio.sleep(0.05)
        row = await _interactive(engine, fg_tokens)
        stats = engine.stats()
        row.update(background_rows=len(background), num_preemptions=stats.counters.get("num_preemptions", 0),
                   num_swap_ins=stats.counters.get("num_swap_ins", 0))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return row
    finally:
        engine.shutdown()


async def _drain(stream) -> None:
    async for _ in stream:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--background-tokens", type=int, default=128)
    ap.add_argument("--interactive-tokens", type=int, default=64)
    ap.add_argument("--joining-tokens", type=int, default=16, help="output tokens of the joining job's requests")
    args = ap.parse_args(argv)
    loaded = load_model(args.model)
    prompts = [[{"role": "user", "content": s.prompt}]
               for s in load_samples(args.batch_size, seed=1, tokenizer=loaded.tokenizer, max_input=256)]
    joining = [[{"role": "user", "content": s.prompt}]
               for s in load_samples(3 * args.batch_size, seed=2, tokenizer=loaded.tokenizer, max_input=1024)]
    budget = EngineConfig().max_background_prefill_tokens
    bg, jt = args.background_tokens, args.joining_tokens
    runs = {
        "idle": ([], bg, 1_000, budget),
        "busy, preemption": (prompts, bg, 3, budget),
        "busy, no preemption": (prompts, bg, 0, budget),
        f"joining, background budget {budget}": (joining, jt, 3, budget),
        "joining, no background budget": (joining, jt, 3, None),
    }
    result = {"date": dt.date.today().isoformat(), "machine": machine(), "model": args.model,
              "batch_size": args.batch_size, "background_tokens": bg, "joining_tokens": jt, "scenarios": {}}
    for name, (background, tokens, max_pre, bg_budget) in runs.items():
        row = asyncio.run(_scenario(loaded, background, args.batch_size, tokens, args.interactive_tokens, max_pre,
                                    bg_budget))
        result["scenarios"][name] = row
        print(f"{name:32s} TTFT {row['ttft_ms']:8.1f} ms  TPOT {row['tpot_ms']:6.1f} ms  "
              f"ITL p99 {row['itl_ms_p99']:7.1f} ms  max {row['itl_ms_max']:7.1f} ms  "
              f"steps before first token {row['steps_before_first_token']:4d}  "
              f"preemptions {row['num_preemptions']}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    device = "cuda" if loaded.device.type == "cuda" else "cpu"
    path = RESULTS / f"{result['date']}-{device}-priority.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
