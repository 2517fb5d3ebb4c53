"""Helpers shared by the serving systems: options, arrival waits, per-token timestamps for `generate`, EOS off."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

from ..metrics import RequestRecord
from ..workload import ServingRequest


@dataclass(frozen=True)
class RunOptions:
    """Settings every system gets.

    Attributes:
        batch_size: most requests decoded together (static: the batch; orca/baton: rows; hf-cb: requests per
            forward).
        max_prefill_tokens: prompt tokens admitted per iteration (orca, baton's `max_prefill_tokens`, hf-cb's
            `max_batch_tokens`); at least one prompt always goes in.
    """

    batch_size: int = 32
    max_prefill_tokens: int = 2048


def wait_until(t: float) -> None:
    """Sleep until `perf_counter()` reaches `t` (returns at once when it has)."""
    delay = t - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def new_records(requests: list[ServingRequest], start: float) -> list[RequestRecord]:
    """Empty records for a run that starts at `start` (arrival = start + offset)."""
    return [RequestRecord(r.index, start + r.arrival_s, len(r.prompt_ids), r.output_len) for r in requests]


def kv_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of K and V for one token over every layer (model dtype)."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    elem = next(model.parameters()).element_size()
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * elem


def pad_token_id(loaded) -> int:
    """The pad id of the padded systems: the tokenizer's EOS (pad = eos, left padding)."""
    eos = loaded.tokenizer.eos_token_id
    return int(eos if eos is not None else min(loaded.eos_token_ids))


class TimingStreamer(BaseStreamer):
    """A `generate` streamer that timestamps every decoding step.

    `generate` calls `put` once with the prompt, then once per step with that step's tokens `[B]` (moved to the
    CPU, so on CUDA the time is taken after the step really finished).
    """

    def __init__(self):
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


@contextlib.contextmanager
def no_eos(model: torch.nn.Module):
    """Generate without any EOS stop (vLLM `ignore_eos`: EOS may be generated and decoding goes on).

    `generate` fills an unset `eos_token_id` from `model.generation_config`, so the model's own is cleared for
    the duration (and restored). `min_new_tokens` is not used: it bans EOS, which changes greedy tokens.
    """
    gc = model.generation_config
    saved = gc.eos_token_id
    gc.eos_token_id = None
    try:
        yield
    finally:
        gc.eos_token_id = saved


def greedy_config(max_new_tokens: int, pad_id: int) -> GenerationConfig:
    """Greedy decoding of exactly `max_new_tokens` (use inside `no_eos`)."""
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)


@contextlib.contextmanager
def attention_implementation(model: torch.nn.Module, name: str):
    """Run with `model.config._attn_implementation = name`, restored afterwards.

    Baton's `ModelRunner` switches a shared SDPA model to its own `baton` attention (SDPA plus ragged decode);
    the peers run with the plain implementation the model was loaded with.
    """
    saved = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = saved
