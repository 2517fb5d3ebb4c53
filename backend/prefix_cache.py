"""The prefix cache: K/V of token blocks kept across requests, so a prompt prefills only what the engine has not
seen (a chat turn resends the conversation, an agent step its transcript, a batch file one system prompt).

Structure: a tree of fixed-size token blocks (`block_size` tokens, 16 by default, vLLM's size). A block is a
child of the block before it, keyed by its own token ids, so a block is found only by walking the exact token
sequence from the start: the same key as vLLM's automatic prefix caching (each block hashed with its tokens and
its parent's hash, `vllm/v1/core/kv_cache_utils.py`), with the tokens themselves as the dict key instead of a
hash, so nothing in the cache is ever served for a different token sequence, and the tree shape of SGLang's
RadixAttention (Zheng et al., "SGLang", 2023) at block granularity. Only whole blocks are kept.

Each block holds its K/V as one tensor per kind, `[layers, kv_heads, block_size, head_dim]` (keys, values), on
one of two tiers: the device (the model's) and, on CUDA, pinned host memory as a second tier. Both tiers are
bounded in bytes; eviction is least-recently-used. A lookup or insert touches a chain from its deepest block
up to the root, so every block is more recent than all its descendants and the least recently used block of a
tier never has a descendant on that tier: eviction takes leaves first. A device block evicted under pressure
moves to the host tier (when there is one) before it is dropped; dropping a block drops its subtree (which
could never be reached again).

Only the engine thread touches an instance. Pure bookkeeping plus tensor copies: it never runs the model.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import torch

DEVICE, HOST = 0, 1  # tiers


@dataclass(eq=False)
class _Block:
    """One cached block: `tokens` (block_size ids) after `parent`'s, with their K/V."""

    parent: "_Block | None"
    tokens: tuple[int, ...]
    keys: torch.Tensor | None = None  # [layers, kv_heads, block_size, head_dim]
    values: torch.Tensor | None = None
    tier: int = DEVICE
    children: dict[tuple[int, ...], "_Block"] = field(default_factory=dict)
    alive: bool = True


@dataclass(frozen=True)
class PrefixMatch:
    """The cached part of a prompt (`PrefixCache.match`).

    Attributes:
        num_tokens: prompt tokens whose K/V the cache holds and that may be used (tokens; block-aligned
            unless capped to leave the prompt's last token to compute).
        blocks: the chain of blocks that holds them, root first.
    """

    num_tokens: int
    blocks: tuple[_Block, ...]


class PrefixCache:
    """K/V of token blocks shared across requests, bounded in bytes per tier, evicted LRU (leaves first).

    Args:
        block_size: tokens per block (>= 1).
        num_layers, kv_heads, head_dim: the model's K/V shape.
        dtype: of the K/V (the model's).
        device: the model's device (the first tier).
        capacity_bytes: most bytes of blocks on the device tier (bytes; 0 disables the cache).
        host_capacity_bytes: most bytes of blocks in host memory, the second tier (bytes; 0: none). It pays
            only when the device is not the CPU (`prefix_reuse.default_capacities` gives a CPU engine none).

    Attributes:
        counters: `evictions` (blocks dropped), `offloads` (blocks moved from the device to host memory),
            `inserted` (blocks added).
    """

    def __init__(self, block_size: int, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str, capacity_bytes: int, host_capacity_bytes: int = 0):
        if block_size < 1:
            raise ValueError(f"block_size: must be >= 1, got {block_size}")
        self.block_size = block_size
        self.device = torch.device(device)
        self.dtype = dtype
        self.block_bytes = 2 * num_layers * kv_heads * block_size * head_dim * torch.empty((), dtype=dtype).element_size()
        self.capacity = [max(0, capacity_bytes), max(0, host_capacity_bytes)]
        self._pin = self.device.type == "cuda"
        self._root = _Block(None, ())
        self._lru: list[OrderedDict[int, _Block]] = [OrderedDict(), OrderedDict()]  # per tier, oldest first
        self.counters = {"evictions": 0, "offloads": 0, "inserted": 0}
        self.version = 0  # bumped by every insert: a request that missed need not look again until it changes

    # ------------------------------------------------------------------------------------- reading
    @property
    def enabled(self) -> bool:
        return self.capacity[DEVICE] >= self.block_bytes

    def tier_bytes(self, tier: int) -> int:
        """Bytes of blocks on `tier` (`DEVICE` or `HOST`)."""
        return len(self._lru[tier]) * self.block_bytes

    @property
    def num_blocks(self) -> int:
        return len(self._lru[DEVICE]) + len(self._lru[HOST])

    def match(self, token_ids: Sequence[int], max_tokens: int) -> PrefixMatch:
        """The longest cached prefix of `token_ids`, usable up to `max_tokens` tokens.

        Args:
            token_ids: the prompt.
            max_tokens: most tokens to take from the cache (tokens; a prompt passes `len - 1`, so that its
                last token is computed and its first output comes from a real forward).
        Returns:
            the match (0 tokens when nothing usable is cached). The chain is touched (most recently used).
        """
        bs, node, chain = self.block_size, self._root, []
        for start in range(0, len(token_ids) - bs + 1, bs):
            if start >= max_tokens:
                break
            child = node.children.get(tuple(token_ids[start:start + bs]))
            if child is None:
                break
            chain.append(child)
            node = child
        self._touch(chain)
        return PrefixMatch(min(len(chain) * bs, max_tokens), tuple(chain))

    def load(self, match: PrefixMatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The matched K/V as one request's cache, on the model's device.

        Returns:
            keys, values: one tensor per layer, each `[1, kv_heads, match.num_tokens, head_dim]` (new memory).
        Raises:
            ValueError: an empty match.
        """
        if not match.num_tokens:
            raise ValueError("nothing to load: the match is empty")
        out = []
        for kind in ("keys", "values"):
            parts = [getattr(b, kind).to(self.device, non_blocking=True) for b in match.blocks]
            kv = torch.cat(parts, dim=2)[:, :, :match.num_tokens]  # [layers, kv_heads, n, head_dim]
            out.append([kv[layer][None] for layer in range(kv.shape[0])])
        return out[0], out[1]

    # ------------------------------------------------------------------------------------- writing
    def insert(self, token_ids: Sequence[int], keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor],
               offset: int = 0) -> int:
        """Keep the whole blocks of a sequence whose K/V were computed.

        Args:
            token_ids: the sequence from its first token (for the keys of its blocks).
            keys, values: per layer `[1, kv_heads, n, head_dim]`: the K/V of tokens `offset .. offset + n - 1`
                (any device; copied, never kept as views).
            offset: position of the first token the tensors hold (tokens).
        Returns:
            blocks added (blocks already cached are only touched). A block whose K/V the tensors do not hold
            and that is not cached (its parent was evicted meanwhile) ends the insert.
        """
        if not self.enabled:
            return 0
        bs, n = self.block_size, keys[0].shape[2]
        end = min(len(token_ids), offset + n) // bs  # whole blocks with K/V or cached
        node, chain, new = self._root, [], []
        for b in range(end):
            tokens = tuple(token_ids[b * bs:(b + 1) * bs])
            child = node.children.get(tokens)
            if child is None:
                if b * bs < offset:  # neither cached nor in the tensors
                    break
                child = _Block(node, tokens)
                node.children[tokens] = child
                new.append((child, b * bs - offset))
            chain.append(child)
            node = child
        if not new:
            self._touch(chain)
            return 0
        self._touch(chain)  # the cached part is the most recent: it is evicted last, after other chains
        added = 0
        for i, (blk, at) in enumerate(new):
            if not blk.parent.alive or not self._make_room(DEVICE, 1, keep=chain):
                for rest, _ in new[i:]:  # no room (or its parent went): the rest of the chain is not kept
                    self._unlink(rest)
                break
            blk.keys = torch.stack([k[0, :, at:at + bs] for k in keys]).to(self.device, copy=True)
            blk.values = torch.stack([v[0, :, at:at + bs] for v in values]).to(self.device, copy=True)
            self._lru[DEVICE][id(blk)] = blk
            added += 1
        self._touch([b for b in chain if b.alive])
        self.counters["inserted"] += added
        self.version += 1
        return added

    def shrink(self, tier: int, max_bytes: int) -> int:
        """Give memory back: evict from `tier` until it holds at most `max_bytes` (bytes). Returns blocks
        evicted from it (moved to host memory, or dropped)."""
        over = self.tier_bytes(tier) - max(0, max_bytes)
        if over <= 0:
            return 0
        before = len(self._lru[tier])
        self._evict(tier, -(-over // self.block_bytes), keep=())
        return before - len(self._lru[tier])

    def clear(self) -> None:
        """Drop every block."""
        for child in list(self._root.children.values()):
            self._drop(child)

    # ------------------------------------------------------------------------------------ eviction
    def _touch(self, chain: Sequence[_Block]) -> None:
        for blk in reversed(chain):  # deepest first: every block ends more recent than its descendants
            lru = self._lru[blk.tier]
            if id(blk) in lru:
                lru.move_to_end(id(blk))

    def _make_room(self, tier: int, blocks: int, keep: Sequence[_Block]) -> bool:
        """Make room for `blocks` more blocks on `tier`; False when it cannot (capacity too small, or only
        `keep`'s blocks are left)."""
        free = self.capacity[tier] // self.block_bytes - len(self._lru[tier])
        if free >= blocks:
            return True
        return self._evict(tier, blocks - free, keep) >= blocks - free

    def _evict(self, tier: int, count: int, keep: Sequence[_Block]) -> int:
        """Evict up to `count` least recently used blocks of `tier`: a device block moves to host memory when
        that tier can make room (by dropping its own LRU blocks), else the LRU block not in `keep` is dropped
        with its subtree (a block of `keep` may move to host memory, never be dropped). Returns blocks evicted
        from `tier`."""
        kept = {id(b) for b in keep}
        done = 0
        while done < count:
            lru = self._lru[tier]
            if not lru:
                break
            if tier == DEVICE and self.capacity[HOST] >= self.block_bytes and self._make_room(HOST, 1, keep):
                if lru:  # (making room may have dropped a subtree that reached down to this tier)
                    self._offload(next(iter(lru.values())))
            else:
                victim = next((b for key, b in lru.items() if key not in kept), None)
                if victim is None:
                    break
                self._drop(victim)
            done += 1
        return done

    def _offload(self, blk: _Block) -> None:
        """Move a device block to pinned host memory (the second tier)."""
        del self._lru[DEVICE][id(blk)]
        for kind in ("keys", "values"):
            src = getattr(blk, kind)
            dst = torch.empty(src.shape, dtype=src.dtype, device="cpu", pin_memory=self._pin)
            dst.copy_(src)
            setattr(blk, kind, dst)
        blk.tier = HOST
        self._lru[HOST][id(blk)] = blk
        self.counters["offloads"] += 1

    def _drop(self, blk: _Block) -> None:
        """Drop a block and its whole subtree."""
        stack = [blk]
        while stack:
            b = stack.pop()
            stack.extend(b.children.values())
            if self._lru[b.tier].pop(id(b), None) is not None:
                self.counters["evictions"] += 1
            b.keys = b.values = None
            b.alive = False
            b.children = {}
        self._unlink(blk)

    def _unlink(self, blk: _Block) -> None:
        blk.alive = False
        if blk.parent is not None and blk.parent.children.get(blk.tokens) is blk:
            del blk.parent.children[blk.tokens]
