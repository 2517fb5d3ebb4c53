"""Serving workload: ShareGPT requests with per-request output lengths and arrival times (vLLM style).

A request is the first human turn of a ShareGPT V3 conversation rendered with the model's chat template; its
output length is the token count of the reference reply capped at `max_output` (vLLM `benchmark_serving.py`
samples ShareGPT the same way). Requests are skipped, as vLLM does, when the templated prompt is longer than
`max_input` tokens or when the prompt or the reply is shorter than 4 tokens. Arrivals are all at t=0 (offline
throughput) or a Poisson process at `request_rate` requests/s (seeded exponential gaps; the first request
arrives at t=0, as vLLM sends it at once).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .sharegpt import load_samples

MIN_TOKENS = 4  # vLLM prunes prompts and replies shorter than this


@dataclass(frozen=True)
class ServingRequest:
    """One request of the serving benchmark.

    Attributes:
        index: position in arrival order (0-based).
        sample_id: the ShareGPT conversation id.
        prompt_ids: token ids of the chat-templated prompt (every system gets exactly these).
        output_len: tokens to generate (EOS is ignored, so every system generates exactly this many).
        arrival_s: arrival time after the start of the run (s).
    """

    index: int
    sample_id: str
    prompt_ids: tuple[int, ...]
    output_len: int
    arrival_s: float


def chat_prompt_ids(tokenizer, text: str) -> list[int]:
    """Token ids of one user turn with the chat template and generation prompt (as `Engine.tokenize` does)."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)
    return tokenizer(rendered, add_special_tokens=False).input_ids


def output_length(tokenizer, reply: str, max_output: int) -> int:
    """Tokens of the reference reply, capped at `max_output` (vLLM: `len(tokenizer(completion).input_ids)`)."""
    return min(len(tokenizer(reply).input_ids), max_output)


def arrival_offsets(n: int, request_rate: float | None, seed: int) -> list[float]:
    """Arrival times (s) of `n` requests: all 0 when `request_rate` is None or infinite, else a seeded Poisson
    process (exponential gaps with mean 1/rate), the first request at 0."""
    if request_rate is None or request_rate == float("inf"):
        return [0.0] * n
    if request_rate <= 0:
        raise ValueError(f"request_rate: must be > 0, got {request_rate}")
    rng = random.Random(seed)
    out, t = [], 0.0
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(request_rate)
    return out


def build_requests(tokenizer, n: int, seed: int = 0, max_input: int = 512, max_output: int = 256,
                   request_rate: float | None = None) -> list[ServingRequest]:
    """`n` seeded ShareGPT requests (see the module docstring).

    Raises:
        ValueError: when the dataset has fewer than `n` usable conversations under these limits.
    """
    picked: list[tuple[str, list[int], int]] = []
    want = n
    while True:
        samples = load_samples(want, seed, tokenizer=tokenizer, max_input=max_input)  # a prefix of one order
        picked = []
        for s in samples:
            ids = chat_prompt_ids(tokenizer, s.prompt)
            out_len = output_length(tokenizer, s.reply, max_output)
            if MIN_TOKENS <= len(ids) <= max_input and out_len >= min(MIN_TOKENS, max_output):
                picked.append((s.id, ids, out_len))
            if len(picked) == n:
                break
        if len(picked) == n or len(samples) < want:
            break
        want *= 2
    if len(picked) < n:
        raise ValueError(f"num_prompts: only {len(picked)} ShareGPT requests fit max_input={max_input}")
    offsets = arrival_offsets(n, request_rate, seed)
    return [ServingRequest(i, sid, tuple(ids), out_len, offsets[i]) for i, (sid, ids, out_len) in enumerate(picked)]
