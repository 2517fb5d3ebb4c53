"""Repro of the joining backlog (docs/benchmarks.md, the interactive latency target), ~90 s:

    python -m benchmarks.slo_trace on     # target 1.5; `off`: no target

SmolLM2-135M, one torch thread, 16 rows, a job kept 32 deep: while a chat decodes the target holds the job's
newcomers back; when it ends, the backlog is admitted in one iteration, and a chat arriving then waits for it.
Prints each chat's TTFT and the engine stats (t s, rows, queue, prompt tokens, prefill forwards, swap-ins,
decode steps, mean prefill ms, cap) every time they change, polled every 50 ms."""
import asyncio, sys, time
import torch
from . import priority as P
from backend import Engine, EngineConfig, Priority, SamplingParams, load_model

torch.set_num_threads(1)
slo = None if sys.argv[1] == "off" else 1.5
loaded = load_model("smollm2-135m-instruct")
class A: smoke=False; batch_size=16
pools = P._prompts(A, loaded)

async def main():
    eng = Engine(EngineConfig(model=loaded.name, max_batch_size=16, interactive_tpot_slo=slo), loaded=loaded).start()
    await asyncio.to_thread(P._warm_up, eng)
    stop = asyncio.Event(); times = []
    feed = asyncio.create_task(P._feed(eng, pools["joining"], 32, 16, times, stop))
    while eng.stats().batch_size < 16: await asyncio.sleep(0.05)
    while eng.stats().step_cost_coefficients is None: await asyncio.sleep(0.05)
    t0 = time.perf_counter(); log = []
    async def poll():
        while True:
            s = eng.stats(); c = s.counters
            log.append((round(time.perf_counter() - t0, 2), s.batch_size, s.queue_depth, c.get("num_prompt_tokens"),
                        c.get("num_prefill_forwards"), c.get("num_swap_ins"), s.num_decode_steps,
                        round(s.mean_prefill_ms, 0), s.slo_background_cap))
            await asyncio.sleep(0.05)
    pt = asyncio.create_task(poll())
    for i in range(2):
        await asyncio.sleep(1.5)
        r = await P._interactive(eng, 32, [])
        print(f"chat {i}: arrive {r['start'] - t0:.2f}s TTFT {r['ttft_ms']:.0f} ms TPOT {r['tpot_ms']:.0f} ms",
              flush=True)
    pt.cancel(); stop.set(); feed.cancel()
    await asyncio.gather(feed, pt, return_exceptions=True)
    eng.shutdown()
    last = None
    for row in log:
        if row[1:] != (last[1:] if last else None): print(row)
        last = row
asyncio.run(main())
