"""What the running batch's K/V copies cost: growing the batch, and swapping rows out (issue #13's stalls).

    python -m benchmarks.kv_copies                  # SmolLM2-135M's K/V shape (30 layers, 3 K/V heads, 64, fp32)
    python -m benchmarks.kv_copies --update-docs    # ... and refresh its table in docs/benchmarks.md
    python -m benchmarks.kv_copies --smoke          # small shapes, seconds

No model runs: a `RunningBatch` of the model's K/V shape gets rows of random K/V, as the engine's inserts give it.

- **Grow**: `--rows` rows of `--tokens` tokens are inserted, then one more row: the insert that passed the
  buffers' row capacity used to reallocate them (zeroing every new cell, then copying the window); now the
  buffers are uninitialised and, on a CPU, hold every row from the start. Reported: each insert's ms, the
  slowest, and the relayouts.
- **Swap out**: `--swap-rows` rows of `--swap-tokens` tokens are copied out of the batch as the interactive
  target's swap-outs do, three rounds in a row, each round's buffers given back before the next: into fresh
  tensors (`extract()`, as before `swap_space.py`) and into the engine's swap space
  (`extract(into=SwapSpace.take(...))`), alternated. Reported: ms per round and MB.

Writes `<out-dir>/<date>-<device>-kv-copies[-smoke|-<tag>].json`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

import torch

from backend.batch import RowKV, RunningBatch
from backend.swap_space import SwapSpace

from .core import RESULTS, machine
from .report import run_and_report

SECTION = "kv-copies"
SHAPE = {"layers": 30, "kv_heads": 3, "head_dim": 64}  # SmolLM2-135M
DEFAULTS = {"rows": 16, "tokens": 1100, "swap_rows": 30, "swap_tokens": 600, "rounds": 3, "max_batch_size": 32}
SMOKE = {"rows": 4, "tokens": 64, "swap_rows": 4, "swap_tokens": 32, "rounds": 2, "max_batch_size": 8}


def _row(tokens: int, shape: dict) -> RowKV:
    def part():
        return [torch.randn(1, shape["kv_heads"], tokens, shape["head_dim"]) for _ in range(shape["layers"])]
    return RowKV(part(), part(), tokens)


def _batch(shape: dict, max_batch_size: int) -> RunningBatch:
    return RunningBatch(shape["layers"], shape["kv_heads"], shape["head_dim"], torch.float32, "cpu", max_batch_size)


def _grow(args, shape: dict) -> dict:
    batch, row = _batch(shape, args.max_batch_size), _row(args.tokens, shape)
    times = []
    for _ in range(args.rows + 1):
        t0 = time.perf_counter()
        batch.insert(row)
        times.append((time.perf_counter() - t0) * 1000)
    return {"insert_ms": times, "last_insert_ms": times[-1], "max_insert_ms": max(times),
            "relayouts": batch.num_relayouts, "buffers": [batch.cap_batch, batch.cap_seq],
            "window_mb": batch.size * args.tokens * batch.bytes_per_token / 1e6}


def _swap(args, shape: dict) -> dict:
    batch, row = _batch(shape, args.max_batch_size), _row(args.swap_tokens, shape)
    for _ in range(args.swap_rows):
        batch.insert(row)
    space = SwapSpace(torch.float32)
    out = {"fresh_ms": [], "swap_space_ms": []}
    for _ in range(args.rounds):
        for mode in ("fresh_ms", "swap_space_ms"):
            t0 = time.perf_counter()
            if mode == "fresh_ms":
                kept = [batch.extract(r) for r in range(batch.size)]
            else:
                kept = [batch.extract(r, into=space.take(batch.row_numel(batch.lengths[r]), batch.row_numel(1)))
                        for r in range(batch.size)]
            out[mode].append((time.perf_counter() - t0) * 1000)
            if mode == "swap_space_ms":
                for kv in kept:
                    space.give(kv.storage)
            del kept
    out["mb"] = args.swap_rows * args.swap_tokens * batch.bytes_per_token / 1e6
    out["swap_space_allocations"] = space.num_allocations
    return out


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    shape = dict(SHAPE) if not args.smoke else {"layers": 2, "kv_heads": 2, "head_dim": 16}
    return {"date": dt.date.today().isoformat(), "machine": machine(), "device": "cpu",
            "torch_threads": torch.get_num_threads(), "shape": shape,
            "command": "python -m benchmarks.kv_copies " + " ".join(argv),
            "args": {k: getattr(args, k) for k in DEFAULTS}, "grow": _grow(args, shape), "swap": _swap(args, shape)}


def markdown(r: dict) -> str:
    a, g, s = r["args"], r["grow"], r["swap"]
    med = statistics.median
    return "\n".join([
        f"{r['date']}, {r['machine']}, {r['torch_threads']} torch thread(s); K/V shape {r['shape']} fp32; "
        f"JSON: `{r.get('json', '')}`; command `{r['command']}`.",
        "",
        "| copy | what | ms |",
        "| --- | --- | --- |",
        f"| grow the batch | insert row {a['rows'] + 1} of {a['tokens']} tokens beside {a['rows']} "
        f"(window {g['window_mb']:.0f} MB; buffers {g['buffers'][0]} x {g['buffers'][1]}, "
        f"{g['relayouts']} relayout(s) in all) | {g['last_insert_ms']:,.0f} (slowest insert {g['max_insert_ms']:,.0f}) |",
        f"| swap out, fresh host memory | {a['swap_rows']} rows x {a['swap_tokens']} tokens ({s['mb']:.0f} MB), "
        f"rounds {', '.join(f'{x:,.0f}' for x in s['fresh_ms'])} | {med(s['fresh_ms']):,.0f} (median) |",
        f"| swap out, swap space | the same, into `SwapSpace` buffers ({s['swap_space_allocations']} allocated in "
        f"all), rounds {', '.join(f'{x:,.0f}' for x in s['swap_space_ms'])} | {med(s['swap_space_ms']):,.0f} (median) |",
    ])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key, value in DEFAULTS.items():
        ap.add_argument("--" + key.replace("_", "-"), type=int, default=None, help=f"default {value}")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--smoke", action="store_true", help="small shapes, seconds")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--render", type=Path, default=None, help="only print (and --update-docs) a saved result")
    ap.add_argument("--update-docs", action="store_true", help="write the Markdown into docs/benchmarks.md")
    args = ap.parse_args(argv)
    for key, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return run_and_report(args, argv, "kv-copies", SECTION, run, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
