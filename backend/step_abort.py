"""Preemptible forwards: a chat that arrives stops the background forward in flight at the next decoder layer.

Without this, an interactive request that arrives while the engine runs a background-only forward (a decode
step over 32 batch rows, a packed prefill of background prompts, a catch-up iteration) waits for that whole
forward before the scheduler can preempt for it: on a 2-core CPU a batch-32 decode step of the default model
takes 300-500 ms, a 1,000-token prefill over a second (issue #13: TTFT 1.6-2.5x idle with 32 background rows).
Preemption in BATON (arXiv 2410.18701 §4.3) and vLLM happens between iterations; this moves the preemption
point inside the iteration, between two decoder layers, for forwards that carry no interactive work.

How it stays exact:
- A decode step stopped after layer k has written the step's K/V into column `off + S` of layers 0..k of the
  running batch (`RunningBatch._write_step`), beyond every row's length: the batch's state (`lengths`,
  `seq_len`) only advances in `finish_step`, which does not run, so those cells are padding until the next step
  writes the same column again. No token is sampled, no random number drawn (`sample` runs after the forward).
- A packed prefill stopped midway drops its fresh cache; its requests go back to the queue unchanged.
- A prefill chunk stopped midway appended K/V to some layers of the request's own cache: they are cut back to
  the tokens prefilled before (`truncate_cache`), and the request goes back to the queue.
At most one forward is stopped per interactive arrival (the switch is cleared when the engine drains its
inbox), and only forwards the core arms: no interactive row in the batch or in the forward, none waiting.

The check is a forward pre-hook on each decoder layer (`torch.nn.Module.register_forward_pre_hook`), installed
once per model: a thread-local read and one `threading.Event.is_set` per layer, well under a microsecond
against milliseconds of layer work.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch
from transformers import DynamicCache


class StepAborted(Exception):
    """A background forward was stopped between two decoder layers because an interactive request arrived."""


_HOOKED = "_baton_step_abort_hooks"  # marks a model whose decoder layers carry the check
_local = threading.local()  # .switch: the AbortSwitch armed on this thread, if any


def _check(module: torch.nn.Module, args: tuple) -> None:
    """Forward pre-hook of every decoder layer: stop the forward when this thread armed a switch that an
    interactive arrival has set."""
    if torch.compiler.is_dynamo_compiling():  # traced into a compiled decode step: never stops (`decode_compile.py`)
        return
    switch = getattr(_local, "switch", None)
    if switch is not None and switch.pending:
        raise StepAborted("an interactive request arrived")


class AbortSwitch:
    """The flag an interactive arrival sets, and the arming of the forwards it may stop.

    Thread-safety: `interactive_arrived` may be called from any thread; `arm` and `clear` from the engine
    thread. Arming is per thread, so a forward on another thread through the same model (another engine over
    one loaded model, as tests have, or a reference `generate`) is never stopped.
    """

    def __init__(self) -> None:
        self._arrived = threading.Event()

    def interactive_arrived(self) -> None:
        """An interactive request was put in the engine's inbox (any thread)."""
        self._arrived.set()

    def clear(self) -> None:
        """The engine thread is about to drain its inbox: the arrivals it signalled are seen."""
        self._arrived.clear()

    @property
    def pending(self) -> bool:
        """An interactive arrival is signalled and not drained yet."""
        return self._arrived.is_set()

    @property
    def armed(self) -> bool:
        """The calling thread's forward may be stopped by this switch now."""
        return getattr(_local, "switch", None) is self

    @contextmanager
    def arm(self, on: bool) -> Iterator[None]:
        """Let the forward run on this thread inside this block be stopped (`on`), or not.

        Raises:
            StepAborted: from inside the block, at a decoder layer, once an interactive request arrived.
        """
        previous, _local.switch = getattr(_local, "switch", None), self if on else None
        try:
            yield
        finally:
            _local.switch = previous

    @staticmethod
    def install(model: torch.nn.Module) -> bool:
        """Hook the decoder layers of a transformers causal LM (`model.model.layers`, the Llama family) once;
        the hooks do nothing on a thread with no armed switch. Returns False (and hooks nothing) when the
        model has no such list: its forwards are never stopped."""
        layers = getattr(getattr(model, "model", None), "layers", None)
        if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
            return False
        if not getattr(model, _HOOKED, False):
            for layer in layers:
                layer.register_forward_pre_hook(_check)
            setattr(model, _HOOKED, True)
        return True


def truncate_cache(cache: DynamicCache, length: int) -> None:
    """Cut every layer of a prefill cache back to its first `length` tokens (the layers a stopped chunk
    extended; the others are already that long). K/V per layer `[1, kv_heads, tokens, head_dim]`."""
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if keys is not None and keys.shape[-2] > length:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]
