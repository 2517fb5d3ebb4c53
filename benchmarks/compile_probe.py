"""Does `torch.compile` make a decode step faster here? Eager against compiled over one static-shape window.

    python -m benchmarks.compile_probe [--model smollm2-135m-instruct] [--rows 32] [--width 640] [--threads 1]
        [--freezing] [--force-gqa] [--rounds 2] [--steps 10]

The forward runs over a fixed `[rows, kv_heads, width, head_dim]` K/V window through a cache layer that writes
the new token's K/V into the window's last column (the shape a compiled decode mode would have to give the
model: no Python ints that change per step), with a boolean mask over the columns and per-row positions, as
`RunningBatch.step_inputs` builds them. Prints the first compile's time, the largest logit difference from
eager and whether the argmaxes agree, then eager and compiled ms per step (mean of `--steps`), alternated for
`--rounds`. `--freezing` sets inductor's `freezing` (packed weights); `--force-gqa` sets
`TRANSFORMERS_SDPA_FORCE_GQA=1`, without which transformers repeats K/V for every query head under dynamo.
Results on the 2-core CPU: `docs/benchmarks.md`, "A compiled decode step".
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class _FixedWindowLayer(CacheLayerMixin):
    """A cache layer over one fixed-shape window: the step's K/V go into its last column."""

    is_compileable = True
    is_sliding = False

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        super().__init__()
        self.k, self.v = k, v  # [rows, kv_heads, width, head_dim]
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states):  # pragma: no cover - always initialised
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        self.k[:, :, -1:].copy_(key_states)
        self.v[:, :, -1:].copy_(value_states)
        return self.k, self.v

    def get_seq_length(self) -> int:
        return self.k.shape[2] - 1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.k.shape[2], 0

    def get_max_length(self) -> int:
        return -1


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--freezing", action="store_true")
    p.add_argument("--force-gqa", action="store_true")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.force_gqa:
        os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "1"
    import torch._inductor.config as inductor_config

    from backend.models import load_model
    from backend.runner import ModelRunner

    loaded = load_model(args.model, device="cpu")
    runner = ModelRunner(loaded.model, loaded.device)  # the engine's attention implementation
    model, B, W = loaded.model, args.rows, args.width
    g = torch.Generator().manual_seed(0)
    shape = (B, runner.kv_heads, W, runner.head_dim)  # [B, H, W, D]
    cache = Cache(layers=[_FixedWindowLayer(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
                          for _ in range(runner.num_layers)])
    lengths = torch.randint(W // 2, W - 1, (B,), generator=g)
    mask = (torch.arange(W)[None, :] >= (W - 1 - lengths)[:, None])[:, None, None, :]  # [B, 1, 1, W]
    ids = torch.randint(0, model.config.vocab_size, (B, 1), generator=g)

    def forward(ids, positions, mask):
        return model(input_ids=ids, position_ids=positions, attention_mask=mask, past_key_values=cache,
                     use_cache=True).logits[:, -1]

    def per_step_ms(fn) -> float:
        fn(ids, lengths[:, None], mask)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn(ids, lengths[:, None], mask)
        return (time.perf_counter() - t0) / args.steps * 1000

    inductor_config.freezing = args.freezing
    with torch.inference_mode():
        ref = forward(ids, lengths[:, None], mask)
        compiled = torch.compile(forward, dynamic=False)
        t0 = time.perf_counter()
        out = compiled(ids, lengths[:, None], mask)
        print(f"first compile {time.perf_counter() - t0:.1f} s; max |logit diff| {(out - ref).abs().max().item():.2e};"
              f" argmax equal: {bool((out.argmax(-1) == ref.argmax(-1)).all())}")
        for _ in range(args.rounds):
            print(f"rows {B}, width {W}: eager {per_step_ms(forward):.1f} ms, compiled {per_step_ms(compiled):.1f} ms"
                  f" (load {os.getloadavg()[0]:.2f})")
    runner.close()


if __name__ == "__main__":
    main()
