"""How the engine core uses the prefix cache (`prefix_cache.py`): which prompts start from cached K/V, what is
kept, and what is counted.

- Before each plan, the requests at the head of the queue look their prompt up (`seed`). A prompt with at least
  `MIN_SEED_TOKENS` cached tokens starts from them: its prefill cache is filled from the blocks and it joins the
  queue as a part-prefilled prompt, so the scheduler plans (and budgets) only the rest, and the core prefills
  the rest alone, attending to the cached prefix: the path a later chunk of a chunked prefill already takes.
  At least the prompt's last token is always computed, so its first token comes from a real forward.
- Newcomers admitted together that share a long prefix (`MIN_SHARED_TOKENS`) do not all compute it: the first
  of them (the leader) is prefilled, its blocks are kept, and the others (followers) start from them in the
  same iteration (`split_group`).
- A prompt's blocks are kept as soon as it is prefilled (so requests that arrive while it runs find them), and
  the generated tokens' blocks when its row ends (finished, stopped, cancelled): a chat's next turn then finds
  its whole history.

A hit changes which forward computes the rest of a prompt, not what it computes: K/V at position i depend only
on tokens 0..i, so greedy outputs stay those of a solo `generate` (tests compare logits within 1e-4, fp32).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psutil
import torch

from .prefix_cache import DEVICE, HOST, PrefixCache
from .request import Request, RequestStatus

if TYPE_CHECKING:
    from .batch import RowKV, RunningBatch
    from .config import EngineConfig
    from .runner import ModelRunner
    from .stats import StatsWindow

MIN_SEED_TOKENS = 32  # a hit shorter than this is recomputed with the packed group (tokens)
MIN_SHARED_TOKENS = 64  # newcomers of one group sharing a prefix this long wait for the leader's blocks (tokens)


def default_capacities(config: EngineConfig, device: torch.device) -> tuple[int, int]:
    """The prefix cache's bytes on the device and in host memory (`EngineConfig.prefix_cache_bytes` and
    `prefix_cache_host_bytes`, with their documented defaults). Returns (device bytes, host bytes)."""
    ram = psutil.virtual_memory().total
    on_cuda = device.type == "cuda"
    dev = config.prefix_cache_bytes
    if dev is None:
        dev = min(8 * 2**30, torch.cuda.get_device_properties(device).total_memory // 10) if on_cuda \
            else min(2 * 2**30, ram // 10)
    host = config.prefix_cache_host_bytes
    if host is None:
        host = min(4 * 2**30, ram // 10) if on_cuda else 0
    return dev, host if on_cuda else 0


class PrefixReuse:
    """The engine core's use of a `PrefixCache` (None when it is turned off).

    Args:
        config: the engine's configuration.
        runner: the model runner (the K/V shape, the device, prefill caches).
        window: the engine's counters (`num_prefix_cache_*`).
    """

    def __init__(self, config: EngineConfig, runner: ModelRunner, window: StatsWindow):
        self.window = window
        self.runner = runner
        dev, host = default_capacities(config, runner.device)
        cache = PrefixCache(config.prefix_block_size, runner.num_layers, runner.kv_heads, runner.head_dim,
                            runner.dtype, runner.device, dev, host)
        self.cache: PrefixCache | None = cache if cache.enabled else None

    @property
    def enabled(self) -> bool:
        return self.cache is not None

    @property
    def device_bytes(self) -> int:
        """Bytes the cache holds on the model's device (bytes)."""
        return self.cache.tier_bytes(DEVICE) if self.cache is not None else 0

    # ------------------------------------------------------------------------------------ admission
    def seed(self, candidates: list[Request]) -> None:
        """Start the new prompts among `candidates` (the head of the queue) from the cache where it holds at
        least `MIN_SEED_TOKENS` of them; a miss is not looked up again until the cache changes."""
        if self.cache is None:
            return
        for req in candidates:
            if (req.status == RequestStatus.WAITING and req.swapped is None and not req.num_prefilled
                    and req.prefix_probe != self.cache.version):
                self.seed_one(req)

    def seed_one(self, req: Request, min_tokens: int = MIN_SEED_TOKENS) -> bool:
        """Fill a new prompt's prefill cache from the prefix cache (it becomes `PREFILLING` with
        `num_prefilled == num_cached_tokens`). Returns True on a hit of at least `min_tokens` tokens."""
        match = self.cache.match(req.prompt_ids, req.num_prompt_tokens - 1)
        if match.num_tokens < max(1, min_tokens):
            req.prefix_probe = self.cache.version
            return False
        keys, values = self.cache.load(match)
        req.prefill_cache = self.runner.cache_from_kv(keys, values)
        req.num_prefilled = req.num_cached_tokens = match.num_tokens
        req.status = RequestStatus.PREFILLING
        return True

    def forget_seed(self, req: Request) -> None:
        """`req`'s held K/V were dropped (memory pressure): it may be seeded again."""
        req.num_cached_tokens, req.prefix_probe = 0, -1

    def split_group(self, group: list[Request]) -> tuple[list[Request], list[Request]]:
        """Newcomers admitted together, split into leaders (prefilled now, packed) and followers (sharing at
        least `MIN_SHARED_TOKENS` prompt tokens with an earlier leader: they start from its blocks)."""
        if self.cache is None or len(group) < 2:
            return group, []
        leaders: list[Request] = []
        followers: list[Request] = []
        for req in group:
            ids = req.prompt_ids
            if len(ids) > MIN_SHARED_TOKENS and any(
                    lead.prompt_ids[:MIN_SHARED_TOKENS] == ids[:MIN_SHARED_TOKENS] for lead in leaders):
                followers.append(req)
            else:
                leaders.append(req)
        return leaders, followers

    # -------------------------------------------------------------------------------------- keeping
    def keep_prompt(self, req: Request, row_kv: RowKV) -> None:
        """Keep the whole blocks of a prefilled prompt (per layer `[1, kv_heads, L, head_dim]`)."""
        if self.cache is not None:
            self.cache.insert(req.prompt_ids, row_kv.keys, row_kv.values)

    def keep_row(self, req: Request, batch: RunningBatch, row: int) -> None:
        """Keep the whole blocks of a row that is leaving the batch: its prompt and the generated tokens whose
        K/V were computed (all but the last). Never fails the request: a failed copy keeps nothing."""
        if self.cache is None:
            return
        try:
            kv = batch.row_views(row)
            self.cache.insert((req.prompt_ids + req.output_ids)[:kv.length], kv.keys, kv.values)
        except Exception:  # e.g. out of memory: the cache is an optimisation
            pass

    def count(self, req: Request) -> None:
        """Count `req`'s lookup once, when its prefill starts (vLLM's `prefix_cache_queries` / `_hits`, in
        tokens)."""
        if self.cache is None or req.prefix_counted:
            return
        req.prefix_counted = True
        self.window.count("num_prefix_cache_queries", req.num_prompt_tokens)
        if req.num_cached_tokens:
            self.window.count("num_prefix_cache_hits", req.num_cached_tokens)
            self.window.count("num_prefix_cache_hit_requests")

    # --------------------------------------------------------------------------------------- memory
    def give_back(self, max_device_bytes: int) -> None:
        """Shrink the device tier to at most `max_device_bytes` (bytes): the running batch comes first."""
        if self.cache is not None:
            self.cache.shrink(DEVICE, max_device_bytes)

    def stats_fields(self) -> dict:
        """The cache's part of an `EngineStats` snapshot (and its counters, copied into the window)."""
        c = self.cache
        if c is None:
            return {}
        self.window.counters["num_prefix_cache_evictions"] = c.counters["evictions"]
        self.window.counters["num_prefix_cache_offloads"] = c.counters["offloads"]
        return {"prefix_cache_bytes": c.tier_bytes(DEVICE), "prefix_cache_host_bytes": c.tier_bytes(HOST),
                "prefix_cache_capacity_bytes": c.capacity[DEVICE] + c.capacity[HOST]}
