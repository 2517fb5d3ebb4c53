"""Probe: does a decode step slow down when rows are parked beside it? (~4 min)

    python -m benchmarks.park_probe

SmolLM2-135M, one torch thread, target 1.5 with a fixed cost model (a step costs 60 + 10 x rows ms: the cap
keeps 3 job rows beside a chat). A job of 3 rows, or of 31 rows of which 28 are parked while the chat decodes
(`backend/row_parking.py`); the same 3 prompts' lengths for the kept rows, twice each, alternating. Reports the
decode steps over the 4 decoding rows (the chat's 60 tokens; median ms, window columns) and writes
`benchmarks/results/<date>-cpu-park-probe.json` (the default model is a CPU-only GGUF here)."""
import asyncio
import datetime as dt
import json
import statistics
import time

import torch

from backend import Engine, EngineConfig, Priority, SamplingParams, load_model
from backend import core as C

from . import priority as P
from .core import RESULTS, machine

STEPS: list[tuple[int, int, float]] = []  # (rows, window columns, ms) of every decode step


class _Fixed:
    """A fixed step cost: the cap does not move while the probe runs."""

    coefficients = (60.0, 10.0, 0.0)

    def decode_ms(self, rows, seq_len):
        return 60.0 + 10.0 * rows

    def prefill_ms(self, tokens, forwards=1):
        return 0.0

    def copy_ms(self, nbytes):
        return 0.0

    def observe_decode(self, *args):
        pass

    observe_prefill = observe_copy = observe_decode


def _timed(decode_step):
    def run(self):
        t0 = time.perf_counter()
        decode_step(self)
        STEPS.append((len(self.rows), self.batch.seq_len, (time.perf_counter() - t0) * 1000))
    return run


async def _run(loaded, prompts: list, job_rows: int) -> dict:
    engine = Engine(EngineConfig(model=loaded.name, max_batch_size=32, interactive_tpot_slo=1.5), loaded=loaded).start()
    engine._core.step_cost = _Fixed()
    params, out = SamplingParams(max_tokens=2000, temperature=0, ignore_eos=True), []
    tasks = [asyncio.create_task(P._drain(engine.generate(p, params, priority=Priority.BATCH), out))
             for p in prompts[:job_rows]]
    try:
        while engine.stats().batch_size < job_rows:
            await asyncio.sleep(0.05)
        await asyncio.sleep(3)
        STEPS.clear()
        async for _ in engine.generate(P.QUESTION, SamplingParams(max_tokens=60, temperature=0, ignore_eos=True),
                                       priority=Priority.INTERACTIVE):
            pass
        four = [s for s in STEPS if s[0] == 4]
        return {"job_rows": job_rows, "parked": job_rows - 3, "steps": len(four),
                "median_ms": statistics.median(s[2] for s in four), "window": [four[0][1], four[-1][1]]}
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        engine.shutdown()


async def _main() -> dict:
    torch.set_num_threads(1)
    loaded = load_model("smollm2-135m-instruct")

    class Args:
        smoke, batch_size = False, 32
    busy = P._prompts(Args, loaded)["busy"]
    prompts = [busy[i % 3] for i in range(32)]
    runs = []
    for job_rows in (3, 31, 3, 31):
        runs.append(await _run(loaded, prompts, job_rows))
        print(runs[-1], flush=True)
    return {"date": dt.date.today().isoformat(), "machine": machine(), "model": loaded.name,
            "command": "python -m benchmarks.park_probe", "runs": runs}


if __name__ == "__main__":
    C.EngineCore._decode_step = _timed(C.EngineCore._decode_step)
    result = asyncio.run(_main())
    path = RESULTS / f"{result['date']}-cpu-park-probe.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
