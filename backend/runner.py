"""The model runner: the only place that calls the model's forward.

Two kinds of forward, kept apart as BATON prescribes (paper §4): a newcomer's prefill runs alone over
`[1, prompt_len]` into a fresh transformers `DynamicCache` (several newcomers admitted together are packed
into one `[1, sum(prompt_len)]` forward with per-prompt causal attention, see `attention.py`; no decoding
row takes part and no padding is computed), and a decode step runs over `[B, 1]` (one new
token per row) against the running batch's padded cache, with explicit per-row `position_ids` (RoPE
positions must not count padding) and an explicit 4-D boolean attention mask (padding columns masked); when
row lengths differ a lot, attention runs per group of similar rows (`attention.py`).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .attention import ATTN_IMPLEMENTATION, ROW_GROUPS_KWARG, SEGMENTS_KWARG, PackedSegments, register
from .batch import RowKV, RunningBatch
from .decode_compile import WIDTH_QUANTUM, StaticDecoder, resolve_mode
from .step_abort import AbortSwitch


class ModelRunner:
    """Runs prefill and decode forwards of one causal LM.

    Args:
        model: a transformers decoder-only causal LM (Llama family) in eval mode.
        device: where its weights are.
        compile: the decode mode, `EngineConfig.compile` (`auto`, `off`, `inductor`, `cuda-graphs`; tests and
            benchmarks may also pass `static-eager`, the static step without compiling).

    Attributes:
        decode_mode: the resolved mode (`off`, `inductor`, `cuda-graphs`, `static-eager`).
        static: the `StaticDecoder` of a mode other than `off`, else None.

    Raises:
        ValueError: `compile: ...` for a mode this device or attention cannot run (`decode_compile.resolve_mode`).
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, compile: str = "off"):
        self.model = model
        self.device = device
        cfg = model.config
        self.num_layers = cfg.num_hidden_layers
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.dtype = next(model.parameters()).dtype
        # SDPA models switch to the `baton` attention: SDPA itself, plus ragged decode attention (attention.py).
        self._original_attn = cfg._attn_implementation
        self.ragged = cfg._attn_implementation in ("sdpa", ATTN_IMPLEMENTATION)
        resolve_mode(compile, torch.device(device), sdpa=self.ragged)  # refused before the model is touched
        if self.ragged:
            cfg._attn_implementation = register()
        # forwards the core arms stop at the next decoder layer once an interactive request arrives
        self.abort = AbortSwitch()
        self.static: StaticDecoder | None = None
        self.decode_mode = "off"
        self.use_decode_mode(compile)
        # layers a background forward may stop at (0: not a model the hooks fit)
        self.abort_layers = len(model.model.layers) if self.abort.install(model) else 0

    def use_decode_mode(self, mode: str) -> None:
        """Switch the decode mode (at construction; tests switch an idle engine's runner to `static-eager`).

        Raises:
            ValueError: `compile: ...` (see `decode_compile.resolve_mode`).
        """
        resolved = resolve_mode(mode, torch.device(self.device), sdpa=self.ragged)
        if self.static is not None:
            self.static.close()
        self.decode_mode = resolved
        self.static = None if resolved == "off" else StaticDecoder(self.model, resolved, self.abort)

    def close(self) -> None:
        """Give the model back as it came (its original attention implementation; the abort hooks stay, inert
        on any thread that arms no switch)."""
        if self.static is not None:
            self.static.close()
        if self._original_attn != ATTN_IMPLEMENTATION:
            self.model.config._attn_implementation = self._original_attn

    def new_batch(self, max_batch_size: int) -> RunningBatch:
        """An empty running batch shaped for this model (in the static modes its widths are rounded to
        `WIDTH_QUANTUM` columns, so that fewer bucket keys need a graph)."""
        return RunningBatch(self.num_layers, self.kv_heads, self.head_dim, self.dtype, self.device, max_batch_size,
                            width_quantum=1 if self.static is None else WIDTH_QUANTUM, zero_fill=self.static is not None)

    @torch.inference_mode()
    def prefill(self, prompt_ids: list[int]) -> tuple[torch.Tensor, RowKV]:
        """Prefill one prompt alone.

        Args:
            prompt_ids: L >= 1 token ids.
        Returns:
            logits of the last position `[V]` float32, and the prompt's K/V (per layer `[1, kv_heads, L, head_dim]`).
        """
        logits, cache = self.prefill_chunk(prompt_ids, 0, None)  # the whole prompt as one chunk
        return logits, self.cache_to_row(cache)

    @torch.inference_mode()
    def prefill_chunk(self, chunk_ids: list[int], start: int, cache: DynamicCache | None
                      ) -> tuple[torch.Tensor, DynamicCache]:
        """Prefill the next chunk of one long prompt, attending to its earlier chunks (chunked prefill: a
        prompt longer than the per-iteration token budget is spread over several iterations so decoding rows
        wait for at most one budget's worth of prompt tokens per step; Agrawal et al., "SARATHI", 2023, and
        vLLM's chunked prefill).

        Args:
            chunk_ids: the n >= 1 prompt tokens at positions `start .. start+n-1`.
            start: tokens prefilled before (0 for the first chunk).
            cache: the cache returned for the previous chunk (None for the first).
        Returns:
            logits of the chunk's last position `[V]` float32 (the first output token's, after the last
            chunk), and the cache (per layer `[1, kv_heads, start+n, head_dim]`).
        """
        n = len(chunk_ids)
        cache = cache if cache is not None else DynamicCache(config=self.model.config)
        ids = torch.tensor([chunk_ids], dtype=torch.long, device=self.device)  # [1, n]
        out = self.model(input_ids=ids, position_ids=torch.arange(start, start + n, device=self.device)[None],
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].float(), cache

    @staticmethod
    def cache_to_row(cache: DynamicCache) -> RowKV:
        """A finished prefill's cache as the K/V of one row (per layer `[1, kv_heads, L, head_dim]`)."""
        keys = [layer.keys for layer in cache.layers]
        return RowKV(keys, [layer.values for layer in cache.layers], keys[0].shape[2])

    def cache_from_kv(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> DynamicCache:
        """A prefill cache that already holds the K/V of a prompt's first tokens (per layer
        `[1, kv_heads, n, head_dim]`, e.g. from the prefix cache), for `prefill_chunk` to go on from."""
        cache = DynamicCache(config=self.model.config)
        for layer, (k, v) in enumerate(zip(keys, values)):
            cache.update(k, v, layer)
        return cache

    @torch.inference_mode()
    def prefill_packed(self, prompts: list[list[int]]) -> tuple[torch.Tensor, list[RowKV]]:
        """Prefill several prompts in one packed forward, each attending only to itself.

        One prompt, or a model whose attention is not SDPA-based: one `prefill` per prompt instead.

        Args:
            prompts: n >= 1 prompts of L_i >= 1 token ids.
        Returns:
            last-position logits `[n, V]` float32, and per prompt its K/V (per layer `[1, kv_heads, L_i, head_dim]`,
            views into the packed forward's cache).
        """
        if len(prompts) == 1 or not self.ragged:
            outs = [self.prefill(p) for p in prompts]
            return torch.stack([logits for logits, _ in outs]), [kv for _, kv in outs]
        spans, start = [], 0
        for p in prompts:
            spans.append((start, len(p)))
            start += len(p)
        ids = torch.tensor([[t for p in prompts for t in p]], dtype=torch.long, device=self.device)  # [1, N]
        positions = torch.cat([torch.arange(L, device=self.device) for _, L in spans])[None]  # [1, N]
        last = torch.tensor([s + L - 1 for s, L in spans], device=self.device)
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True,
                         logits_to_keep=last, **{SEGMENTS_KWARG: PackedSegments(tuple(spans))})
        keys = [layer.keys for layer in cache.layers]  # [1, kv_heads, N, head_dim]
        values = [layer.values for layer in cache.layers]
        rows = [RowKV([k[:, :, s:s + L] for k in keys], [v[:, :, s:s + L] for v in values], L) for s, L in spans]
        return out.logits[0].float(), rows

    @torch.inference_mode()
    def decode(self, batch: RunningBatch, input_ids: torch.Tensor) -> torch.Tensor:
        """One decode step for every row of `batch` (writes their K/V in place, advances the batch).

        In a compile mode the step runs through the static step (`StaticDecoder.decode`) once its bucket is
        compiled; until then, and with `off`, over the window (below).

        Args:
            input_ids: `[B, 1]` the last token of each row, in row order.
        Returns:
            next-token logits `[B, V]`.
        """
        if self.static is not None:
            logits = self.static.decode(batch, input_ids)
            if logits is not None:
                return logits
        position_ids, mask, cache, groups = batch.step_inputs()
        extra = {ROW_GROUPS_KWARG: groups} if groups is not None and self.ragged else {}
        out = self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask,
                         past_key_values=cache, use_cache=True, **extra)
        batch.finish_step()
        return out.logits[:, -1]
