"""`baton serve` against the in-process engine: the same ShareGPT requests, `--clients` concurrent streams.

    python -m benchmarks.serve_http [--num-prompts 64] [--clients 32] [--model ...] [--device auto] [--rounds 2]
    python -m benchmarks.serve_http --smoke     # random:tiny, 8 prompts, 4 clients, 16 tokens: a check, seconds

Issue #11's measurement: output tokens/s through HTTP against the in-process engine in the same run, and the
TTFT and ITL the server adds (median, p99). Each round runs the in-process engine (`Engine.generate`, one task
per client taking the next request) and then a `baton serve` subprocess on the same model and options, driven
by the official `openai` client (`AsyncOpenAI`, streaming `/v1/completions` with the workload's exact prompt
token ids, `ignore_eos`, greedy), so both generate the same tokens. Rounds alternate, so a machine that slows
down over the run slows both. Metrics as `benchmarks.metrics` (vLLM's definitions); over HTTP a token is timed
when its chunk arrives, and a token whose text the detokenizer holds back (an incomplete UTF-8 sequence, a
possible stop string) arrives with the next one, so HTTP's ITL pools a few merged gaps; output tokens are
counted from each stream's `usage`. Writes `benchmarks/results/<date>-<device>-serve-http[-smoke].json`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backend import Engine, EngineConfig, SamplingParams, load_model

from .core import RESULTS, machine
from .metrics import RequestRecord, SystemRun, summarize
from .workload import ServingRequest, build_requests

REPO = Path(__file__).resolve().parents[1]
SMOKE = {"model": "random:tiny", "device": "cpu", "num_prompts": 8, "clients": 4, "max_output": 16,
         "max_input": 64, "batch_size": 4}
DEFAULTS = {"model": "smollm2-135m-instruct", "device": "auto", "num_prompts": 64, "clients": 32,
            "max_output": 256, "max_input": 512, "batch_size": 32}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model spec (default smollm2-135m-instruct)")
    ap.add_argument("--device", help="auto (default), cpu, cuda")
    ap.add_argument("--num-prompts", type=int, help="requests per run (default 64)")
    ap.add_argument("--clients", type=int, help="concurrent streams (default 32)")
    ap.add_argument("--batch-size", type=int, help="the engine's max batch size (default 32)")
    ap.add_argument("--max-input", type=int, help="skip prompts longer than this (default 512 tokens)")
    ap.add_argument("--max-output", type=int, help="cap on output tokens (default 256)")
    ap.add_argument("--rounds", type=int, default=1, help="in-process / HTTP pairs, alternating (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--engine-process", choices=("on", "off"), default=None,
                    help="`baton serve --engine-process`: the engine core in a child process or in the server's "
                         "(default: not given, as `baton serve` runs by default: in the server's process)")
    ap.add_argument("--smoke", action="store_true", help="tiny random model, few prompts and tokens")
    args = ap.parse_args(argv)
    for key, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


async def _clients(requests: list[ServingRequest], clients: int, one) -> tuple[list[RequestRecord], float]:
    """Run `one(request, record)` for every request, `clients` at a time (each client takes the next one)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(requests)):
        queue.put_nowait(i)
    start = time.perf_counter()
    records = [RequestRecord(r.index, start, len(r.prompt_ids), r.output_len) for r in requests]

    async def client() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            records[i].arrival = time.perf_counter()
            await one(requests[i], records[i])

    await asyncio.gather(*(client() for _ in range(clients)))
    return records, start


def in_process(loaded, requests: list[ServingRequest], args: argparse.Namespace) -> SystemRun:
    """The requests through an in-process `Engine`."""
    config = EngineConfig(model=loaded.name, max_batch_size=args.batch_size)

    async def one(req: ServingRequest, rec: RequestRecord) -> None:
        params = SamplingParams(max_tokens=req.output_len, temperature=0, ignore_eos=True)
        async for out in engine.generate(list(req.prompt_ids), params):
            if out.token_id is not None:
                rec.token_ids.append(out.token_id)
                rec.token_times.append(time.perf_counter())

    with Engine(config, loaded=loaded) as engine:
        engine.generate_batch([list(requests[0].prompt_ids)], SamplingParams(max_tokens=2, ignore_eos=True))
        records, start = asyncio.run(_clients(requests, args.clients, one))
    return SystemRun(records, start)


def start_server(args: argparse.Namespace, db: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """A `baton serve` subprocess on a free loopback port; returns it and its URL once it answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--model", args.model, "--device", args.device, "--port", "0",
         "--db", str(db), "--max-batch-size", str(args.batch_size),
         *(["--engine-process", args.engine_process] if args.engine_process else [])],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.monotonic() + 600
    while (m := re.search(r"on (http://\S+) ", log.read_text())) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"baton serve did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return proc, m.group(1)


def over_http(url: str, requests: list[ServingRequest], args: argparse.Namespace) -> SystemRun:
    """The requests as streaming `/v1/completions` calls of the official client."""
    import openai

    async def run() -> tuple[list[RequestRecord], float]:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
        model = (await client.models.list()).data[0].id

        async def one(req: ServingRequest, rec: RequestRecord) -> None:
            stream = await client.completions.create(
                model=model, prompt=list(req.prompt_ids), max_tokens=req.output_len, temperature=0, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].text:
                    rec.token_times.append(time.perf_counter())
                if chunk.usage is not None:
                    rec.token_ids = [0] * chunk.usage.completion_tokens  # counted, not the ids

        await one(requests[0], RequestRecord(-1, 0.0, 0, 0))  # warm-up
        try:
            return await _clients(requests, args.clients, one)
        finally:
            await client.close()

    records, start = asyncio.run(run())
    return SystemRun(records, start)


def compare(engine: dict, http: dict) -> dict:
    """HTTP over in-process: the throughput ratio, and what the server adds to TTFT and ITL (ms)."""
    added = {f"{m}_{p}_added_ms": http[f"{m}_ms"][p] - engine[f"{m}_ms"][p]
             for m in ("ttft", "itl") for p in ("median", "p99")}
    return {"output_throughput_ratio": http["output_throughput"] / engine["output_throughput"], **added}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    loaded = load_model(args.model, device=args.device)
    args.device = str(loaded.device)  # the server loads the same model on the same device
    requests = build_requests(loaded.tokenizer, args.num_prompts, args.seed, args.max_input, args.max_output)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            engine = summarize(in_process(loaded, requests, args))
            proc, url = start_server(args, Path(tmp) / "serve.db", Path(tmp) / f"serve-{r}.log")
            try:
                http = summarize(over_http(url, requests, args))
            finally:
                proc.terminate()
                proc.wait(60)
            rounds.append({"in_process": engine, "http": http, "comparison": compare(engine, http)})
            print(_line(r, "in-process", engine), _line(r, "http", http), sep="\n", flush=True)
            print(json.dumps(rounds[-1]["comparison"], indent=2))
    result = {"benchmark": "serve_http", "machine": machine(),
              "date": dt.datetime.now().isoformat(timespec="seconds"),
              "args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    device = "cuda" if "cuda" in str(args.device) else "cpu"
    path = args.out_dir / f"{dt.date.today()}-{device}-serve-http{'-smoke' if args.smoke else ''}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


def _line(r: int, name: str, s: dict) -> str:
    ttft, itl = s["ttft_ms"], s["itl_ms"]
    return (f"round {r} {name:10s} {s['output_throughput']:8.1f} out tok/s  TTFT median {ttft['median']:8.1f} "
            f"p99 {ttft['p99']:8.1f} ms  ITL median {itl['median']:7.2f} p99 {itl['p99']:7.2f} ms")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
