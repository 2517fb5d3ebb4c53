"""Where one decode step's time goes: a batch of rows at a realistic context, profiled op by op.

    python -m benchmarks.decode_profile [--model smollm2-135m-instruct] [--rows 32] [--min-len 300]
        [--max-len 600] [--steps 20] [--profile-steps 5]

Builds a running batch the way the engine does (`ModelRunner.new_batch`, one `insert` per row; the rows' K/V
are random, which changes no timing), then runs the engine's own decode step (`EngineCore._decode_step`'s
calls: the `[B, 1]` input ids from Python ints, `ModelRunner.decode`, `sample`, `.tolist()`) and reports:

- the wall time of a step without the profiler (median of `--steps`), split into its host-side phases
  (input ids, the model's forward, sampling, the `.tolist()` that brings the tokens to Python);
- with `torch.profiler`, the time spent inside aten ops, by what called them: the linear layers of the
  decoder (q/k/v/o, gate/up/down), attention (the attention function: SDPA, ragged grouping), the K/V write
  into the batch, the LM head over the whole vocabulary, the other model ops (embedding, RMSNorm, RoPE, SiLU,
  residual adds), the step inputs (mask, position ids) and sampling. Every aten op's self time is credited to
  the nearest labelled region above it (labels are added with `record_function` around the modules);
  "Python / host" is the step's wall time minus the time inside any aten op.

Prints a Markdown table (for `docs/benchmarks.md`) and writes the numbers to
`benchmarks/results/<date>-cpu-decode-profile-<rows>x<threads>t.json` (`--out-dir` elsewhere).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

CATEGORIES = ("linear", "attention", "kv_write", "lm_head", "other_model_ops", "step_inputs", "sampling",
              "input_ids", "tolist")
LABELS = {f"baton::{c}": c for c in CATEGORIES}


def _labelled(fn, label: str):
    def wrapper(*args, **kwargs):
        with record_function(label):
            return fn(*args, **kwargs)
    return wrapper


@contextlib.contextmanager
def labelled_model(model: torch.nn.Module, batch):
    """Wrap the model's linear layers, attention function, LM head and the batch's K/V write in labels."""
    from transformers import AttentionInterface

    from backend import attention

    saved = []
    lm_head = model.get_output_embeddings()
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            label = "baton::lm_head" if mod is lm_head else "baton::linear"
            saved.append((mod, "forward", mod.forward))
            mod.forward = _labelled(mod.forward, label)
    fn = attention.baton_attention_forward
    AttentionInterface.register(attention.ATTN_IMPLEMENTATION, _labelled(fn, "baton::attention"))
    saved.append((batch, "_write_step", batch._write_step))
    batch._write_step = _labelled(batch._write_step, "baton::kv_write")
    saved.append((batch, "step_inputs", batch.step_inputs))
    batch.step_inputs = _labelled(batch.step_inputs, "baton::step_inputs")
    try:
        yield
    finally:
        for obj, attr, _ in saved:
            obj.__dict__.pop(attr, None)  # the instance attribute set above; the class's method shows again
        AttentionInterface.register(attention.ATTN_IMPLEMENTATION, fn)


def build_batch(runner, rows: int, lengths: list[int], seed: int = 0):
    """A running batch of `rows` rows with the given cached lengths (random K/V) and their last tokens."""
    g = torch.Generator().manual_seed(seed)
    batch = runner.new_batch(rows)
    from backend.batch import RowKV

    batch.reserve(rows, max(lengths))
    for n in lengths:
        shape = (1, runner.kv_heads, n, runner.head_dim)  # [1, H, L, D]
        keys = [torch.randn(shape, generator=g, dtype=runner.dtype) for _ in range(runner.num_layers)]
        values = [torch.randn(shape, generator=g, dtype=runner.dtype) for _ in range(runner.num_layers)]
        batch.insert(RowKV(keys, values, n))
    vocab = runner.model.config.vocab_size
    last = [int(t) for t in torch.randint(0, vocab, (rows,), generator=g)]
    return batch, last


def decode_step(runner, batch, last: list[int], st, phases: dict | None = None) -> list[int]:
    """One engine decode step (the calls of `EngineCore._decode_step`); fills `phases` with seconds."""
    from backend.sampler import sample

    t0 = time.perf_counter()
    with record_function("baton::input_ids"):
        input_ids = torch.tensor([[t] for t in last], device=runner.device)  # [B, 1]
    t1 = time.perf_counter()
    logits = runner.decode(batch, input_ids)  # [B, V]
    t2 = time.perf_counter()
    with record_function("baton::sampling"):
        tokens_t = sample(logits, st, None)
    t3 = time.perf_counter()
    with record_function("baton::tolist"):
        tokens = tokens_t.tolist()
    t4 = time.perf_counter()
    if phases is not None:
        for k, v in (("input_ids", t1 - t0), ("forward", t2 - t1), ("sampling", t3 - t2), ("tolist", t4 - t3)):
            phases.setdefault(k, []).append(v)
        phases.setdefault("step", []).append(t4 - t0)
    return tokens


def op_breakdown(prof) -> tuple[dict[str, float], dict[str, float]]:
    """Self time of aten ops (us) by the nearest labelled region above them; and the top ops by self time."""
    by_cat: dict[str, float] = {c: 0.0 for c in CATEGORIES}
    by_cat["unlabelled"] = 0.0
    ops: dict[str, float] = {}
    for ev in prof.events():
        if ev.name in LABELS or not ev.name.startswith("aten::"):
            continue
        parent, cat = ev.cpu_parent, None
        while parent is not None and cat is None:
            cat = LABELS.get(parent.name)
            parent = parent.cpu_parent
        cat = cat or "unlabelled"
        if cat == "unlabelled" and _in_forward(ev):
            cat = "other_model_ops"
        by_cat[cat] += ev.self_cpu_time_total
        ops[ev.name] = ops.get(ev.name, 0.0) + ev.self_cpu_time_total
    return by_cat, ops


def _in_forward(ev) -> bool:
    p = ev.cpu_parent
    while p is not None:
        if p.name == "baton::forward":
            return True
        p = p.cpu_parent
    return False


def run(args) -> dict:
    from backend.models import load_model
    from backend.runner import ModelRunner
    from backend.sampler import SamplingTensors
    from backend.config import SamplingParams

    loaded = load_model(args.model, device="cpu")
    runner = ModelRunner(loaded.model, loaded.device)
    rnd = random.Random(args.seed)
    lengths = [rnd.randint(args.min_len, args.max_len) for _ in range(args.rows)]
    st = SamplingTensors.build([SamplingParams(temperature=0)] * args.rows, runner.device)
    results = {}
    batch, last = build_batch(runner, args.rows, lengths, args.seed)
    for _ in range(3):  # warm-up
        last = decode_step(runner, batch, last, st)
    phases: dict[str, list[float]] = {}
    for _ in range(args.steps):
        last = decode_step(runner, batch, last, st, phases)
    results["phases_ms"] = {k: 1000 * statistics.median(v) for k, v in phases.items()}
    forward = runner.model.forward
    runner.model.forward = _labelled(forward, "baton::forward")
    try:
        with labelled_model(runner.model, batch), profile(activities=[ProfilerActivity.CPU]) as prof:
            walls = []
            for _ in range(args.profile_steps):
                t0 = time.perf_counter()
                last = decode_step(runner, batch, last, st)
                walls.append(time.perf_counter() - t0)
    finally:
        del runner.model.forward
    by_cat, ops = op_breakdown(prof)
    n = args.profile_steps
    results["profiled_step_ms"] = 1000 * sum(walls) / n
    results["ops_ms"] = {k: v / 1000 / n for k, v in by_cat.items()}
    results["top_ops_ms"] = dict(sorted(((k, v / 1000 / n) for k, v in ops.items()), key=lambda kv: -kv[1])[:15])
    results["lengths"] = (min(lengths), max(lengths), sum(lengths) / len(lengths))
    results["seq_len"] = batch.seq_len
    runner.close()
    return results


def markdown(res: dict, args) -> str:
    ph, ops = res["phases_ms"], res["ops_ms"]
    wall = res["profiled_step_ms"]
    in_ops = sum(ops.values())
    lines = [f"Batch {args.rows} rows, contexts {res['lengths'][0]}-{res['lengths'][1]} tokens "
             f"(mean {res['lengths'][2]:.0f}, window {res['seq_len']} columns), {torch.get_num_threads()} threads.",
             "",
             f"Unprofiled step (median of {args.steps}): **{ph['step']:.1f} ms** = input ids {ph['input_ids']:.2f} "
             f"+ forward {ph['forward']:.1f} + sampling {ph['sampling']:.2f} + `.tolist()` {ph['tolist']:.3f} ms.",
             "",
             f"Profiled ({args.profile_steps} steps, {wall:.1f} ms/step with the profiler on):",
             "",
             "| where | ms / step | share |",
             "| --- | --- | --- |"]
    names = {"linear": "linear layers (q/k/v/o, gate/up/down)", "attention": "attention (SDPA over the window)",
             "kv_write": "K/V write into the batch", "lm_head": "LM head (49,152-token vocab)",
             "other_model_ops": "other model ops (embedding, RMSNorm, RoPE, SiLU, adds, views)",
             "step_inputs": "step inputs (mask, position ids)", "sampling": "sampling (argmax)",
             "input_ids": "input ids tensor", "tolist": "`.tolist()`", "unlabelled": "other aten ops"}
    for k, v in sorted(ops.items(), key=lambda kv: -kv[1]):
        if v >= 0.005:
            lines.append(f"| {names.get(k, k)} | {v:.2f} | {100 * v / wall:.1f}% |")
    lines.append(f"| Python / host (outside any aten op) | {wall - in_ops:.2f} | {100 * (wall - in_ops) / wall:.1f}% |")
    lines += ["", "Top aten ops by self time (ms / step): " +
              ", ".join(f"`{k}` {v:.2f}" for k, v in list(res["top_ops_ms"].items())[:8]) + "."]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--min-len", type=int, default=300)
    p.add_argument("--max-len", type=int, default=600)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out-dir", default=None, help="where the JSON goes (default: benchmarks/results)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    from benchmarks.core import RESULTS, machine

    res.update(machine=machine(), threads=torch.get_num_threads(), load_average=os.getloadavg(),
               date=str(dt.date.today()), args=vars(args))
    out_dir = Path(args.out_dir) if args.out_dir else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{dt.date.today()}-cpu-decode-profile-{args.rows}x{torch.get_num_threads()}t.json"
    out.write_text(json.dumps(res, indent=2))
    print(f"# {res['machine']}; load average {load} (1, 5, 15 min); {out}")
    print(markdown(res, args))


if __name__ == "__main__":
    main()
