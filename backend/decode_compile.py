"""Compiled decode steps: `EngineConfig.compile` (`auto`, `off`, `inductor`, `cuda-graphs`).

Every mode but `off` runs the decode step through the static step (`backend/static_step.py`: rows bucketed to
powers of two, attention over the buffers' whole width, static input buffers), which has the same shapes,
strides and addresses from step to step, so that:

- `inductor`: `torch.compile(dynamic=False, fullgraph=True)` of the static step (inductor, `freezing`: weights as
  constants and, on CPU, pre-packed for MKL), one graph per bucket key `(Bp, T)` (rows, buffer width). The
  K/V views are arguments of the graph, so a graph outlives the buffers it was compiled on: a later allocation
  of the same width reuses it. A bucket is compiled lazily, in a background thread, on dummy tensors of the
  same shapes and strides (zeros; about the bucket's share of the K/V buffers for the time of the compile);
  until it is ready the step runs on the window path (`RunningBatch.step_inputs`, exactly as `off`), so the
  compile (100-114 s per bucket for the default model on the 2-core CPU, `docs/benchmarks.md`) never stalls
  the engine or holds a first answer back. It does compete with the engine while it runs: dynamo's tracing
  holds the GIL and inductor's C++ compiles take the cores (eager steps were ~3x slower meanwhile, measured),
  and torch 2.13 keeps `torch.compiler.is_compiling()` true process-wide during a compile, so the engine
  thread's eager steps take transformers' compile branches (`repeat_kv` instead of `pack_gqa`: same values).
- `cuda-graphs`: each bucket's static step is captured as a `torch.cuda.CUDAGraph` (after two warm-up runs on
  a side stream, as the torch docs prescribe: "CUDA Graphs", `torch.cuda.graph`) at its first use, then
  replayed: one launch per step instead of one per kernel (vLLM and SGLang capture their decode batches the
  same way, per padded batch size). A graph is bound to the buffers' addresses, so a relayout of the batch
  (new buffers) drops the graphs and the next step of each bucket captures again. All graphs share one memory
  pool. Capture takes milliseconds, so it is done inline, not in the background.
- `auto`: `cuda-graphs` on CUDA, `off` on CPU, where the compiled step measured 1.44x faster than the window
  path at batch 1 but 0.94-0.96x at batch 8-32 (the static step reads the buffers' whole width), after 100-114 s
  of compile per bucket (`docs/benchmarks.md`, "A compiled decode step").
- `cuda-graphs` has not run on a GPU in this project: it is tested on the CPU only through the static step run
  eagerly and a stand-in for `CudaGraphs` (`tests/test_compile_modes.py`).

Inside a compiled or captured graph the decoder layers' pre-hooks do not run, so in these modes a decode step
cannot be stopped mid-forward for an interactive arrival (`backend/step_abort.py`): the step runs with the
switch disarmed, and the hook is a no-op under dynamo tracing (`torch.compiler.is_dynamo_compiling`). A step on the
window path while a bucket compiles stays abortable.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

import torch

from .attention import STATIC_KWARG
from .batch import RunningBatch
from .config import COMPILE_MODES
from .static_step import StaticStep, row_bucket, static_cache
from .step_abort import AbortSwitch

log = logging.getLogger(__name__)

MODES = COMPILE_MODES  # `EngineConfig.compile`: auto, off, inductor, cuda-graphs
STATIC_EAGER = "static-eager"  # internal (tests, benchmarks): the static step run eagerly, no compile
WIDTH_QUANTUM = 256  # buffer widths are rounded to this in the static modes (tokens): fewer distinct graphs
RECOMPILE_LIMIT = 64  # dynamo's graphs per code object (default 8): one per (rows, width) bucket key


def resolve_mode(mode: str, device: torch.device, sdpa: bool = True) -> str:
    """The decode mode an engine runs: `auto` resolved for the device, the others checked against it.

    Args:
        mode: `auto`, `off`, `inductor`, `cuda-graphs` (or the internal `static-eager`).
        device: where the model is.
        sdpa: the model's attention is SDPA-based (the static step needs it; `auto` falls back to `off`).
    Returns:
        `off`, `inductor`, `cuda-graphs` or `static-eager`.
    Raises:
        ValueError: `compile: ...` for an unknown mode, `cuda-graphs` off CUDA, or a static mode without SDPA.
    """
    if mode not in (*MODES, STATIC_EAGER):
        raise ValueError(f"compile: must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "auto":
        return "cuda-graphs" if device.type == "cuda" and sdpa else "off"
    if mode == "cuda-graphs" and device.type != "cuda":
        raise ValueError(f"compile: 'cuda-graphs' needs a CUDA device, but the model is on {device.type}; "
                         f"use auto, off or inductor")
    if mode != "off" and not sdpa:
        raise ValueError(f"compile: {mode!r} needs attn_implementation 'sdpa'")
    return mode


class CudaGraphs:
    """Captures a step as a `torch.cuda.CUDAGraph` and replays it (torch docs, "CUDA Graphs": warm up on a side
    stream, capture under `torch.cuda.graph`, replay; every graph in one shared memory pool, as vLLM does for
    its batch sizes). Only the engine thread uses it."""

    def __init__(self) -> None:
        self._pool = None

    def capture(self, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        """Run `fn` twice on a side stream (warm-up: lazy initialisation, allocator), capture it, and return
        a replay that launches the graph and returns its static output (overwritten by the next replay).
        `fn` must read and write only tensors whose addresses stay valid while the graph is used."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = fn()

        def replay() -> torch.Tensor:
            graph.replay()
            return out

        return replay


class StaticDecoder:
    """Runs decode steps through the static step: eagerly (`static-eager`), compiled (`inductor`) or captured
    and replayed (`cuda-graphs`). Only the engine thread calls `decode`.

    Args:
        model: the causal LM (Llama family, `baton` attention registered).
        mode: `static-eager`, `inductor` or `cuda-graphs` (see `resolve_mode`).
        abort: the runner's abort switch (disarmed around compiled and captured steps).
        freezing: inductor's `freezing` (weights as constants, packed for MKL on CPU); `inductor` only.
        graphs: what captures and replays CUDA graphs (`CudaGraphs`; tests pass a stand-in that replays by
            running the captured step again on the same tensors, to check the bookkeeping on a CPU).

    Attributes:
        compile_seconds: `(Bp, T) -> s` each bucket key's compile (inductor) or capture (CUDA graphs) took.
        compile_errors: `(Bp, T) -> message` of buckets whose compile failed (they stay on the window path).
        num_static_steps: steps run through the static step; num_window_steps: steps left to the window path
            (bucket not compiled yet); num_captures: CUDA graphs captured (one per bucket and allocation).
    """

    def __init__(self, model: torch.nn.Module, mode: str, abort: AbortSwitch, freezing: bool = True,
                 graphs: "CudaGraphs | None" = None):
        if mode not in (STATIC_EAGER, "inductor", "cuda-graphs"):
            raise ValueError(f"compile: no static decoder for {mode!r}")
        self.model, self.mode, self.abort = model, mode, abort
        self._steps: dict[int, StaticStep] = {}  # by Bp, over the batch's current buffers
        self.compile_seconds: dict[tuple[int, int], float] = {}
        self.compile_errors: dict[tuple[int, int], str] = {}
        self.num_static_steps = 0
        self.num_window_steps = 0
        # inductor
        self._compiled: Callable | None = None
        self._ready: set[tuple[int, int]] = set()
        self._queued: set[tuple[int, int]] = set()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._idle = threading.Condition()
        # cuda-graphs: by Bp, (the StaticStep captured on, its replay)
        self.graphs = graphs if graphs is not None else CudaGraphs()
        self._graphs: dict[int, tuple[StaticStep, Callable[[], torch.Tensor]]] = {}
        self.num_captures = 0
        if mode == "inductor":
            import torch._dynamo.config as dynamo_config

            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
            self._compiled = torch.compile(self._forward, dynamic=False, fullgraph=True,
                                           options={"freezing": freezing})

    # ------------------------------------------------------------------------------ the step
    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor,
                 cache) -> torch.Tensor:
        """The static step's forward: `[Bp, 1]` ids and positions, `[Bp, 1, 1, T]` mask -> `[Bp, V]` logits."""
        out = self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask,
                         past_key_values=cache, use_cache=True, **{STATIC_KWARG: True})
        return out.logits[:, -1]

    def decode(self, batch: RunningBatch, input_ids: torch.Tensor) -> torch.Tensor | None:
        """One decode step for every row of `batch` through the static step (writes their K/V in place and
        advances the batch), or None when this bucket is not compiled yet (the caller runs the window path).

        Args:
            batch: the running batch, B >= 1 rows.
            input_ids: `[B, 1]` long, each row's last token.
        Returns:
            next-token logits `[B, V]`, or None.
        """
        B = batch.size
        rows = row_bucket(B, batch.max_batch_size)
        batch.make_room_for_step(rows)
        key = (rows, batch.cap_seq)
        if self.mode == "inductor" and key not in self._ready:
            self._request_compile(key, batch)
            self.num_window_steps += 1
            return None
        step = self._step(batch, rows)
        step.fill(batch, input_ids)
        if self.mode == STATIC_EAGER:
            logits = self._forward(step.input_ids, step.position_ids, step.mask, step.cache(batch))
        elif self.mode == "inductor":
            try:
                with self.abort.arm(False):
                    logits = self._compiled(step.input_ids, step.position_ids, step.mask, step.cache(batch))
            except Exception as exc:  # nothing advanced (the K/V column written is padding): the window path
                self._ready.discard(key)
                self.compile_errors[key] = repr(exc)
                log.warning("the compiled decode step for %s rows x %s columns failed: %r", *key, exc)
                self.num_window_steps += 1
                return None
        else:
            logits = self._replay(batch, step, key)
        batch.finish_step()
        self.num_static_steps += 1
        return logits[:B]

    def _step(self, batch: RunningBatch, rows: int) -> StaticStep:
        """This bucket's static buffers over the batch's current buffers (all made again after a relayout)."""
        step = self._steps.get(rows)
        if step is None or not step.matches(batch):
            for stale in [r for r, s in self._steps.items() if not s.matches(batch)]:
                del self._steps[stale]
                self._graphs.pop(stale, None)
            step = self._steps[rows] = StaticStep(batch, rows)
        return step

    # --------------------------------------------------------------------------- cuda graphs
    def _replay(self, batch: RunningBatch, step: StaticStep, key: tuple[int, int]) -> torch.Tensor:
        """Replay this bucket's CUDA graph (capturing it first when it is new or its buffers changed)."""
        entry = self._graphs.get(step.rows)
        if entry is None or entry[0] is not step:
            args = (step.input_ids, step.position_ids, step.mask, step.cache(batch))
            t0 = time.perf_counter()
            with self.abort.arm(False):
                entry = self._graphs[step.rows] = (step, self.graphs.capture(lambda: self._forward(*args)))
            self.compile_seconds[key] = time.perf_counter() - t0
            self.num_captures += 1
        return entry[1]().clone()

    # ------------------------------------------------------------------------------ inductor
    def _request_compile(self, key: tuple[int, int], batch: RunningBatch) -> None:
        if key in self._queued or key in self.compile_errors or self._closed:
            return
        self._queued.add(key)
        self._jobs.put((key, batch.num_layers, batch.kv_heads, batch.head_dim, batch.dtype, batch.device))
        if self._worker is None:
            self._worker = threading.Thread(target=self._compile_loop, name="baton-compile", daemon=True)
            self._worker.start()

    def _compile_loop(self) -> None:
        while not self._closed:
            job = self._jobs.get()
            if job is None:
                break
            key = job[0]
            t0 = time.perf_counter()
            try:
                self._compile_one(*job)
            except Exception as exc:  # that bucket stays on the window path; the engine goes on
                self.compile_errors[key] = repr(exc)
                log.warning("compiling the decode step for %s rows x %s columns failed: %r", key[0], key[1], exc)
            else:
                self.compile_seconds[key] = time.perf_counter() - t0
                self._ready.add(key)
            with self._idle:
                self._queued.discard(key)
                self._idle.notify_all()

    def _compile_one(self, key, num_layers, kv_heads, head_dim, dtype, device) -> None:
        """Compile one bucket key `(Bp, T)` by running the compiled step once on dummy tensors of the real
        step's shapes and strides (zeros; padding rows only, so no row is all-masked)."""
        rows, width = key
        with torch.inference_mode():  # grad mode is per thread: the engine thread's tensors are inference tensors
            shape = (rows, kv_heads, width, head_dim)  # [Bp, H, T, D]: `k[:Bp]` has a contiguous tensor's strides
            column = torch.full((1,), width - 1, dtype=torch.long, device=device)
            cache = static_cache([torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)],
                                 [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)], column)
            ids = torch.zeros(rows, 1, dtype=torch.long, device=device)
            mask = torch.zeros(rows, 1, 1, width, dtype=torch.bool, device=device)
            mask[..., width - 1] = True
            self._compiled(ids, torch.zeros_like(ids), mask, cache)

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Block until no compile is queued or running (tests, benchmarks). Returns False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._queued, timeout)

    def ready(self, rows: int, width: int) -> bool:
        """Is the bucket key `(rows, width)` compiled?"""
        return (rows, width) in self._ready

    def close(self) -> None:
        """Stop compiling buckets (one in progress finishes in its daemon thread); drop the graphs."""
        self._closed = True
        self._jobs.put(None)
        self._graphs.clear()
        self._steps.clear()
