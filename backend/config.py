"""Engine and sampling configuration, validated at construction.

`SamplingParams` follows vLLM's names and meanings (`vllm.SamplingParams`): `temperature=0` is greedy,
`top_k=0` (or -1) and `top_p=1` disable those filters, `stop` strings end a request and are not part of its
text, `ignore_eos` keeps generating past the end-of-sequence token. Every invalid value raises `ValueError`
naming the field, so a bad request fails alone and is never silently "fixed".
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from .intake import text_problem


class Priority(enum.IntEnum):
    """Scheduling class of a request; a lower value is more urgent (BATON §4.3 preemptive scheduling).

    INTERACTIVE: a person is waiting on the stream. AGENT: a multi-step task. BATCH: offline work.
    """

    INTERACTIVE = 0
    AGENT = 1
    BATCH = 2


def _check(cond: bool, field_name: str, message: str) -> None:
    if not cond:
        raise ValueError(f"{field_name}: {message}")


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded.

    Attributes:
        max_tokens: most output tokens to generate (>= 1).
        temperature: softmax temperature (>= 0); 0 (or anything below 1e-5) selects greedy argmax decoding.
        top_p: nucleus sampling mass in (0, 1]; 1 disables it.
        top_k: keep only the k most likely tokens; 0 or -1 disables it.
        seed: seed of this request's own `torch.Generator`, so a sampled output is reproducible
            whatever else shares the batch; None draws from the engine's generator.
        stop: a string or list of strings (valid UTF-8 text); generation ends before the first occurrence,
            which is not included in the text (vLLM semantics).
        ignore_eos: keep generating after the end-of-sequence token (benchmarks use it).

    Raises:
        ValueError: for any invalid field, with the field name first in the message.
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] | list[str] | str | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        _check(isinstance(self.max_tokens, int) and not isinstance(self.max_tokens, bool),
               "max_tokens", f"must be an integer, got {self.max_tokens!r}")
        _check(self.max_tokens >= 1, "max_tokens", f"must be >= 1, got {self.max_tokens}")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and not isinstance(value, bool),
                   name, f"must be a number, got {value!r}")
            _check(math.isfinite(value), name, f"must be finite, got {value}")
        _check(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(isinstance(self.top_k, int) and not isinstance(self.top_k, bool),
               "top_k", f"must be an integer, got {self.top_k!r}")
        _check(self.top_k >= -1, "top_k", f"must be -1, 0 (disabled) or a positive integer, got {self.top_k}")
        if self.seed is not None:
            _check(isinstance(self.seed, int) and not isinstance(self.seed, bool),
                   "seed", f"must be an integer or None, got {self.seed!r}")
            _check(-(2**63) <= self.seed < 2**64, "seed", f"must fit in 64 bits, got {self.seed}")
        _check(isinstance(self.ignore_eos, bool), "ignore_eos", f"must be a boolean, got {self.ignore_eos!r}")
        stop = self.stop
        if stop is None:
            stop = ()
        elif isinstance(stop, str):
            stop = (stop,)
        else:
            _check(isinstance(stop, (list, tuple)), "stop", f"must be a string or a list of strings, got {stop!r}")
            stop = tuple(stop)
        for s in stop:
            _check(isinstance(s, str) and s != "", "stop", f"every stop string must be a non-empty string, got {s!r}")
            problem = text_problem(s)
            _check(problem is None, "stop", f"{s!r} is {problem}")
        object.__setattr__(self, "stop", stop)

    @property
    def greedy(self) -> bool:
        """True when decoding is argmax: temperature below 1e-5 (vLLM's `_SAMPLING_EPS`), where dividing the
        logits by it would overflow float32."""
        return self.temperature < GREEDY_EPS


DEFAULT_MODEL = "smollm2-135m-instruct"
COMPILE_MODES = ("auto", "off", "inductor", "cuda-graphs")  # `EngineConfig.compile` (`backend.decode_compile`)
GREEDY_EPS = 1e-5  # temperatures below this decode greedily


@dataclass
class EngineConfig:
    """Static configuration of one `Engine`.

    Attributes:
        model: `smollm2-135m-instruct` (the embedded default), a local Hugging Face model folder, a local
            `.gguf` file, or `random:<preset>` (random weights of a real shape; see `backend.models.PRESETS`).
        device: `auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`.
        dtype: `auto` (bfloat16 on CUDA, float32 on CPU), `float32`, `bfloat16` or `float16`.
        max_batch_size: most rows decoded together in one step.
        max_model_len: longest context (prompt + output tokens) of one request; None takes the model's
            `max_position_embeddings`.
        max_prefill_tokens: prompt tokens prefilled between two decode steps (tokens); bounds how long
            running rows wait for newcomers (their inter-token latency). A longer prompt is prefilled in
            chunks of at most this many tokens over several iterations (chunked prefill).
        max_background_prefill_tokens: the same budget for agent and batch prompts while an interactive
            request is decoding (tokens), so a chat keeps streaming while background work joins the batch
            (their long prompts are chunked finer); None: no separate budget.
        seed: seed of the random-weight models and of the engine's shared sampling generator.
        attn_implementation: transformers attention backend (`sdpa` or `eager`).
        kv_budget_bytes: most bytes the batch's padded KV window may take (bytes). None: on CPU
            min(8 GiB, 40% of RAM); on CUDA the window plus the device's free memory (read with NVML).
        memory_low_watermark: admit new or swapped-in rows while the window stays under this fraction of
            the budget.
        memory_high_watermark: swap out lowest-priority rows while the window is above this fraction.
        max_preemptions: times one request may be preempted before it is left to finish (no starvation).
        prefix_cache_bytes: most bytes of K/V the prefix cache keeps on the device (bytes; 0 turns it off;
            `backend.prefix_cache`). None: on CPU min(2 GiB, 10% of RAM); on CUDA min(8 GiB, 10% of the
            device's memory). It is given back before a live request would wait or be swapped for it.
        prefix_cache_host_bytes: the cache's second tier in pinned host memory on CUDA, where blocks evicted
            from the device go before they are dropped (bytes; 0: none). None: min(4 GiB, 10% of RAM) on
            CUDA; unused on CPU.
        prefix_block_size: tokens per cached block (vLLM's default, 16).
        interactive_tpot_slo: the interactive latency target, a multiple >= 1 (e.g. 1.5): while an
            interactive request decodes, background (agent, batch) rows and work are limited so that an
            iteration costs at most this multiple of a decode step of the interactive rows alone, as
            predicted from the engine's own step timings (`backend.step_cost`, `backend.sched_slo`); rows
            over the cap are swapped out and come back when no chat decodes. None: no target.
        compile: how decode steps run (`backend.decode_compile`): `off`, the window path, eager; `inductor`,
            `torch.compile` of a static-shape step per row bucket, compiled in the background while the window
            path serves; `cuda-graphs`, the static step captured per row bucket as a CUDA graph and replayed
            (CUDA only); `auto`: `cuda-graphs` on CUDA, `off` on CPU (measured on the 2-core CPU with the default
            model: inductor 1.44x faster per step at batch 1, 0.94-0.96x at batch 8-32, 100-114 s of compile
            per bucket; `docs/benchmarks.md`). The compiled modes need `attn_implementation="sdpa"`, and their
            steps cannot be stopped for an interactive arrival.
        threads: torch's intra-op threads for the engine's forwards on a CPU (`torch.set_num_threads`, which
            is process-wide). None: torch's default (one per core) in an in-process `Engine`; in an
            `EngineProcess`, one per core but one, left to the front end (measured on the 2-core CPU: a chat
            in the TUI decoded at 115 ms a token with 2 engine threads, 75 ms with 1; `docs/benchmarks.md`).
        process: run the engine core in a child process (`EngineProcess`; `make_engine` picks the class), so a
            front end's Python (a TUI, an HTTP server) never holds the GIL the engine's forwards need.

    Raises:
        ValueError: for any invalid field, with the field name first in the message.
    """

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    max_batch_size: int = 32
    max_model_len: int | None = None
    max_prefill_tokens: int = 2048
    max_background_prefill_tokens: int | None = 256
    seed: int = 0
    attn_implementation: str = "sdpa"
    kv_budget_bytes: int | None = None
    memory_low_watermark: float = 0.80
    memory_high_watermark: float = 0.95
    max_preemptions: int = 3
    prefix_cache_bytes: int | None = None
    prefix_cache_host_bytes: int | None = None
    prefix_block_size: int = 16
    interactive_tpot_slo: float | None = None
    compile: str = "auto"
    threads: int | None = None
    process: bool = False

    def __post_init__(self) -> None:
        _check(isinstance(self.model, str) and self.model.strip() != "", "model", "must be a non-empty string")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               "device", f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        _check(self.dtype in ("auto", "float32", "bfloat16", "float16"),
               "dtype", f"must be one of auto, float32, bfloat16, float16; got {self.dtype!r}")
        _check(isinstance(self.max_batch_size, int) and self.max_batch_size >= 1,
               "max_batch_size", f"must be an integer >= 1, got {self.max_batch_size!r}")
        if self.max_model_len is not None:
            _check(isinstance(self.max_model_len, int) and self.max_model_len >= 2,
                   "max_model_len", f"must be an integer >= 2 or None, got {self.max_model_len!r}")
        _check(isinstance(self.max_prefill_tokens, int) and self.max_prefill_tokens >= 1,
               "max_prefill_tokens", f"must be an integer >= 1, got {self.max_prefill_tokens!r}")
        if self.max_background_prefill_tokens is not None:
            _check(isinstance(self.max_background_prefill_tokens, int) and self.max_background_prefill_tokens >= 1,
                   "max_background_prefill_tokens",
                   f"must be an integer >= 1 or None, got {self.max_background_prefill_tokens!r}")
        if self.kv_budget_bytes is not None:
            _check(isinstance(self.kv_budget_bytes, int) and self.kv_budget_bytes > 0,
                   "kv_budget_bytes", f"must be a positive integer or None, got {self.kv_budget_bytes!r}")
        _check(0 < self.memory_low_watermark <= self.memory_high_watermark <= 1, "memory_low_watermark",
               f"need 0 < low ({self.memory_low_watermark}) <= high ({self.memory_high_watermark}) <= 1")
        _check(isinstance(self.max_preemptions, int) and self.max_preemptions >= 0,
               "max_preemptions", f"must be an integer >= 0, got {self.max_preemptions!r}")
        for name in ("prefix_cache_bytes", "prefix_cache_host_bytes"):
            value = getattr(self, name)
            if value is not None:
                _check(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                       name, f"must be an integer >= 0 (bytes) or None, got {value!r}")
        _check(isinstance(self.prefix_block_size, int) and self.prefix_block_size >= 1,
               "prefix_block_size", f"must be an integer >= 1, got {self.prefix_block_size!r}")
        if self.interactive_tpot_slo is not None:
            value = self.interactive_tpot_slo
            _check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                   and value >= 1, "interactive_tpot_slo",
                   f"must be a number >= 1 (a multiple of the interactive rows' own step time, e.g. 1.5) "
                   f"or None, got {value!r}")
        if self.threads is not None:
            _check(isinstance(self.threads, int) and not isinstance(self.threads, bool) and self.threads >= 1,
                   "threads", f"must be an integer >= 1 or None, got {self.threads!r}")
        _check(isinstance(self.process, bool), "process", f"must be True or False, got {self.process!r}")
        _check(self.attn_implementation in ("sdpa", "eager"),
               "attn_implementation", f"must be 'sdpa' or 'eager', got {self.attn_implementation!r}")
        _check(self.compile in COMPILE_MODES, "compile",
               f"must be one of {', '.join(COMPILE_MODES)}; got {self.compile!r}")
        _check(not (self.compile == "cuda-graphs" and self.device == "cpu"), "compile",
               "'cuda-graphs' needs a CUDA device, but device is 'cpu'; use auto, off or inductor")
        _check(self.compile in ("auto", "off") or self.attn_implementation == "sdpa", "compile",
               f"{self.compile!r} needs attn_implementation 'sdpa', got {self.attn_implementation!r}")
