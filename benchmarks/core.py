"""Engine-core measurements: model load (cold/warm), single-request decode speed, `baton batch` throughput.

    python -m benchmarks.core [--num-prompts 64] [--max-tokens 128] [--batch-sizes 1,32] [--skip-load]

Writes `benchmarks/results/<date>-<device>-core.json` and prints a Markdown table for `docs/benchmarks.md`.
Load times run in fresh processes (a cold load gets an empty `BATON_CACHE_DIR`), and `baton batch` runs as
the real command on a ShareGPT batch file, so the numbers are what a user sees.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    """A one-line description of this machine (CPU model, cores, torch)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def load_time(cache_dir: str) -> dict:
    """Load the default model in a fresh process; returns load seconds and whole-process seconds."""
    code = ("import time, json; t=time.perf_counter(); from backend import load_model; m=load_model(); "
            "print(json.dumps({'load_s': m.load_seconds, 'source': m.source, 'import_and_load_s': "
            "time.perf_counter()-t}))")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "BATON_CACHE_DIR": cache_dir})
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["process_s"] = time.perf_counter() - start
    return row


def single_request(max_tokens: int) -> dict:
    """One request alone: TTFT and decode speed (tokens/s after the first token)."""
    from backend import Engine, EngineConfig, SamplingParams

    prompt = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    with Engine(EngineConfig(max_batch_size=1)) as engine:
        engine.generate_batch(["warm up"], SamplingParams(max_tokens=4))
        res = engine.generate_batch([prompt], SamplingParams(max_tokens=max_tokens, temperature=0,
                                                             ignore_eos=True))[0]
    decode_s = (res.e2e_ms - res.ttft_ms) / 1000
    return {"prompt_tokens": res.prompt_tokens, "output_tokens": res.completion_tokens, "ttft_ms": res.ttft_ms,
            "tpot_ms": decode_s * 1000 / (res.completion_tokens - 1),
            "decode_tokens_per_s": (res.completion_tokens - 1) / decode_s}


def batch_run(batch_file: Path, max_batch_size: int) -> dict:
    """Run `baton batch` as a user would; throughput counts the whole command (model load included) and
    the engine part alone (from the command's own summary)."""
    out = batch_file.with_suffix(f".bs{max_batch_size}.out.jsonl")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "app.cli", "batch", str(batch_file), "-o", str(out),
                           "--max-batch-size", str(max_batch_size)], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    ok = [x for x in lines if x.get("error") is None]
    completion = sum(x["response"]["body"]["usage"]["completion_tokens"] for x in ok)
    prompt = sum(x["response"]["body"]["usage"]["prompt_tokens"] for x in ok)
    return {"max_batch_size": max_batch_size, "requests": len(lines), "ok": len(ok), "prompt_tokens": prompt,
            "output_tokens": completion, "command_s": wall, "command_output_tokens_per_s": completion / wall,
            "summary": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--skip-load", action="store_true", help="skip the cold/warm load measurement")
    args = ap.parse_args(argv)
    result: dict = {"date": dt.date.today().isoformat(), "machine": machine()}
    if not args.skip_load:
        with tempfile.TemporaryDirectory() as cache:
            result["load_cold"] = load_time(cache)
            result["load_warm"] = load_time(cache)
        print("load", result["load_cold"], result["load_warm"], flush=True)
    result["single_request"] = single_request(args.max_tokens)
    print("single", result["single_request"], flush=True)
    from benchmarks.sharegpt import load_samples, to_batch_lines

    with tempfile.TemporaryDirectory() as tmp:
        batch_file = Path(tmp) / "sharegpt.jsonl"
        lines = to_batch_lines(load_samples(args.num_prompts), args.max_tokens)
        batch_file.write_text("".join(json.dumps(x) + "\n" for x in lines))
        result["batch"] = []
        for bs in (int(x) for x in args.batch_sizes.split(",")):
            result["batch"].append(batch_run(batch_file, bs))
            print("batch", result["batch"][-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    device = "cuda" if "no GPU" not in result["machine"] else "cpu"
    path = RESULTS / f"{result['date']}-{device}-core.json"
    if path.exists():  # a partial re-run (e.g. --skip-load) updates the day's file
        old = json.loads(path.read_text())
        runs = {b["max_batch_size"]: b for b in old.get("batch", [])}
        runs.update({b["max_batch_size"]: b for b in result.get("batch", [])})
        result = {**old, **result, "batch": [runs[k] for k in sorted(runs)]}
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
