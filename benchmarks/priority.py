"""Interactive latency with a background job filling the batch, versus an idle engine.

    python -m benchmarks.priority [--model smollm2-135m-instruct] [--batch-size 32] [--background-tokens 128]

Scenarios, each on a fresh engine over one loaded model:
- `idle`: the interactive request alone.
- `busy, preemption`: `--batch-size` background requests (ShareGPT prompts, `Priority.BATCH`) fill the batch,
  then the interactive request arrives: a background row is swapped out to host memory and the interactive
  request is prefilled at once (BATON §4.3).
- `busy, no preemption` (`max_preemptions=0`): the same, but the interactive request waits for a free row.

Reports TTFT and TPOT of the interactive request (ms) and the engine steps between its arrival and its first
token; writes `benchmarks/results/<date>-<device>-priority.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import time

from backend import Engine, EngineConfig, Priority, SamplingParams, load_model

from .core import RESULTS, machine
from .sharegpt import load_samples

QUESTION = [{"role": "user", "content": "Give me three tips for writing clear documentation."}]


async def _interactive(engine: Engine, tokens: int) -> dict:
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    steps0 = engine.stats().num_decode_steps
    start = time.perf_counter()
    times, first_step = [], None
    async for out in engine.generate(QUESTION, params, priority=Priority.INTERACTIVE):
        if out.token_id is not None:
            times.append(time.perf_counter())
            first_step = out.engine_step if first_step is None else first_step
    ttft = (times[0] - start) * 1000
    tpot = (times[-1] - times[0]) * 1000 / (len(times) - 1)
    return {"ttft_ms": ttft, "tpot_ms": tpot, "steps_before_first_token": first_step - steps0,
            "output_tokens": len(times)}


async def _scenario(loaded, background: list, batch_size: int, bg_tokens: int, fg_tokens: int,
                    max_preemptions: int) -> dict:
    config = EngineConfig(model=loaded.name, max_batch_size=batch_size, max_preemptions=max_preemptions)
    engine = Engine(config, loaded=loaded).start()
    try:
        await asyncio.to_thread(engine.generate_batch, ["warm up"], SamplingParams(max_tokens=4))
        params = SamplingParams(max_tokens=bg_tokens, temperature=0, ignore_eos=True)
        tasks = [asyncio.create_task(_drain(engine.generate(p, params, priority=Priority.BATCH)))
                 for p in background]
        while background and engine.stats().batch_size < min(batch_size, len(background)):
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
    args = ap.parse_args(argv)
    loaded = load_model(args.model)
    prompts = [[{"role": "user", "content": s.prompt}]
               for s in load_samples(args.batch_size, seed=1, tokenizer=loaded.tokenizer, max_input=256)]
    runs = {
        "idle": ([], 1_000),
        "busy, preemption": (prompts, 3),
        "busy, no preemption": (prompts, 0),
    }
    result = {"date": dt.date.today().isoformat(), "machine": machine(), "model": args.model,
              "batch_size": args.batch_size, "background_tokens": args.background_tokens, "scenarios": {}}
    for name, (background, max_pre) in runs.items():
        row = asyncio.run(_scenario(loaded, background, args.batch_size, args.background_tokens,
                                    args.interactive_tokens, max_pre))
        result["scenarios"][name] = row
        print(f"{name:22s} TTFT {row['ttft_ms']:8.1f} ms  TPOT {row['tpot_ms']:6.1f} ms  "
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
