"""The command-line options that configure the engine, shared by every `baton` command that runs one (the TUI,
`chat`, `batch`, `jobs run`), the mapping of `EngineConfig`'s field-named errors back to those options, and
`start_engine` (the only place the CLI imports the engine itself, and with it torch).

`--backend URL` (with `--api-key`, else `$OPENAI_API_KEY`) makes those commands use a remote OpenAI-compatible
server instead (`app.remote.RemoteEngine`, imported only then): `engine_config` returns a `RemoteSpec` and
`start_engine` reaches the server instead of loading a model."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from decimal import Decimal

from typing import TYPE_CHECKING

from backend import COMPILE_MODES, DEFAULT_MODEL, EngineConfig

from .errors import UsageError

if TYPE_CHECKING:
    from ..chat.engine_api import ChatEngine

API_KEY_ENV = "OPENAI_API_KEY"


@dataclass(frozen=True)
class RemoteSpec:
    """A remote engine to use instead of a local model (`--backend`).

    Attributes:
        url: the server (`http://host:port`, with or without `/v1`).
        api_key: the bearer key, or None.
        model: the served model to use; None: the first the server lists.
    """

    url: str
    api_key: str | None = None
    model: str | None = None

    def make(self):
        """An unstarted `app.remote.RemoteEngine` for this spec (imports `app.remote` and `openai`)."""
        from ..remote import RemoteEngine

        return RemoteEngine(self.url, api_key=self.api_key, model=self.model)

#: `EngineConfig` field (the first word of its ValueError messages) -> the option that sets it.
ENGINE_OPTIONS = {"model": "--model", "device": "--device", "dtype": "--dtype", "max_batch_size": "--max-batch-size",
                  "max_prefill_tokens": "--max-prefill-tokens", "kv_budget_bytes": "--kv-budget",
                  "prefix_cache_bytes": "--prefix-cache", "interactive_tpot_slo": "--interactive-slo",
                  "compile": "--compile", "threads": "--threads", "process": "--engine-process"}

_SIZE = re.compile(r"(\d+(?:\.\d*)?)\s*(|b|kb|mb|gb|tb|kib|mib|gib|tib)", re.IGNORECASE)
MAX_SIZE = 2**63  # bytes: what a signed 64-bit integer holds
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """A size in bytes from `512MiB`, `2GiB`, `1.5GB` or `1048576` (KiB/MiB/GiB/TiB are powers of 1024,
    KB/MB/GB/TB of 1000), at least 1 and below 2**63 bytes (8 EiB).

    Raises:
        argparse.ArgumentTypeError: not such a size (a one-line usage error).
    """
    m = _SIZE.fullmatch(text.strip())
    size = Decimal(0)
    if m is not None and len(m.group(1).split(".")[0].lstrip("0")) <= 20:  # more digits: far beyond 8 EiB
        size = Decimal(m.group(1)) * _UNITS[m.group(2).lower()]  # decimal: no float overflow
    if not 0 < size < MAX_SIZE:
        raise argparse.ArgumentTypeError(f"must be a positive size such as 512MiB or 2GiB (below 8 EiB), "
                                         f"got {text!r}")
    return max(1, int(size))


def parse_cache_size(text: str) -> int:
    """A prefix cache size: `0` (off) or a size as `parse_size` takes it (bytes).

    Raises:
        argparse.ArgumentTypeError: neither.
    """
    if text.strip() in ("0", "0B", "0b", "off"):
        return 0
    try:
        return parse_size(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 0 (off) or a size such as 512MiB or 2GiB, got {text!r}") from None


#: the interactive latency target every command runs with unless told `--interactive-slo off`: measured on the
#: 2-core CPU (docs/benchmarks.md), a chat typed into the TUI beside a running 32-line job streams at 102 ms a
#: token against 490 ms without it (89 ms with no job), and a job with no chat running keeps its throughput
DEFAULT_INTERACTIVE_SLO = 1.5


def parse_slo(text: str) -> float | None:
    """`--interactive-slo`: a multiple (checked by `EngineConfig`: a finite number >= 1), or `off` (None).

    Raises:
        argparse.ArgumentTypeError: neither a number nor `off`.
    """
    if text.strip().lower() == "off":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 1 (e.g. 1.5) or off, got {text!r}") from None


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Add the engine options (an "engine" group) to `parser`."""
    group = parser.add_argument_group("engine")
    group.add_argument("--model", default=DEFAULT_MODEL,
                       help="model: %(default)s (default), a local model folder, a local .gguf file, "
                            "or random:<preset> (random weights, e.g. random:tiny)")
    group.add_argument("--device", default=EngineConfig.device, help="auto (default: CUDA when present), cpu, cuda or cuda:N")
    group.add_argument("--dtype", default=EngineConfig.dtype, help="auto (default), float32, bfloat16 or float16")
    group.add_argument("--max-batch-size", type=int, default=EngineConfig.max_batch_size, metavar="N",
                       help="most requests decoded together (default: %(default)s)")
    group.add_argument("--max-prefill-tokens", type=int, default=EngineConfig.max_prefill_tokens, metavar="N",
                       help="prompt tokens prefilled between two decode steps; longer prompts are prefilled in "
                            "chunks (default: %(default)s; lower it on a CPU for steadier streaming)")
    group.add_argument("--kv-budget", type=parse_size, default=None, metavar="SIZE",
                       help="most memory the batch's KV cache may take, e.g. 2GiB; more requests wait or are "
                            "swapped out to host memory (default: on CPU min(8 GiB, 40%% of RAM); on CUDA "
                            "what the device has free, read with NVML)")
    group.add_argument("--prefix-cache", type=parse_cache_size, default=None, metavar="SIZE",
                       help="memory for K/V kept across requests, so a chat turn or a repeated system prompt "
                            "prefills only what is new, e.g. 1GiB; 0 turns it off (default: on CPU min(2 GiB, "
                            "10%% of RAM); on CUDA min(8 GiB, 10%% of device memory), then host memory)")
    group.add_argument("--interactive-slo", type=parse_slo, default=DEFAULT_INTERACTIVE_SLO, metavar="X",
                       help="while a chat streams, limit background (batch, agent) work so that each of its "
                            "steps takes at most X times what it would take alone; the engine learns its step "
                            "times as it runs; off: background work is not limited (default: %(default)s)")
    group.add_argument("--compile", choices=COMPILE_MODES, default=EngineConfig.compile,
                       help="decode steps: off (eager), inductor (torch.compile per batch-size bucket, compiled in "
                            "the background while eager steps serve), cuda-graphs (captured per bucket, CUDA only); "
                            "auto: cuda-graphs on CUDA, off on CPU, where compiling measured not worth it "
                            "(default: %(default)s)")
    group.add_argument("--threads", type=int, default=None, metavar="N",
                       help="torch threads for the model's steps on a CPU (default: one per core, or one per core "
                            "but one with --engine-process on, leaving a core to the app)")
    group.add_argument("--engine-process", choices=("on", "off"), default=None,
                       help="run the model in a child process, so the app's own work (the TUI's drawing) never "
                            "holds the GIL its steps need: on a 2-core CPU a chat in the TUI decoded 1.4x faster "
                            "(default: on for the TUI; off for serve, chat, batch and jobs run: `baton serve` "
                            "measured 0.74x the throughput with it on that CPU, its child having one torch thread)")


#: the commands whose engine runs in a child process unless told `--engine-process off` (None and "tui": the TUI;
#: `baton serve` measured slower with it on the 2-core CPU, docs/benchmarks.md)
PROCESS_COMMANDS = (None, "tui")


def add_remote_options(parser: argparse.ArgumentParser) -> None:
    """Add `--backend URL` and `--api-key KEY` (a "remote engine" group) to `parser`."""
    group = parser.add_argument_group("remote engine")
    group.add_argument("--backend", metavar="URL",
                       help="use the OpenAI-compatible server at URL (vLLM, SGLang, llama-server, Ollama, "
                            "baton serve; e.g. http://gpu-box:8000) instead of loading a model; --model then "
                            "names a served model (default: the first the server lists), and the other "
                            "engine options are ignored")
    group.add_argument("--api-key", metavar="KEY", default=None, dest="backend_api_key",
                       help=f"the server's API key, with --backend (default: ${API_KEY_ENV} if set)")


def option_message(exc: ValueError, options: dict[str, str] = ENGINE_OPTIONS) -> str:
    """`max_batch_size: must be ...` -> `--max-batch-size: must be ...` (the option the user typed)."""
    text = str(exc)
    m = re.match(r"(\w+): ", text)
    if m and m.group(1) in options:
        return options[m.group(1)] + text[len(m.group(1)):]
    return text


def engine_config(args: argparse.Namespace) -> EngineConfig | RemoteSpec:
    """The `EngineConfig` the parsed engine options describe, or the `RemoteSpec` of `--backend`.

    Raises:
        UsageError: an invalid value, named by its option (`--api-key` without `--backend`, an empty one, a
            `--backend` that is not an http(s) URL).
    """
    backend = getattr(args, "backend", None)
    key = getattr(args, "backend_api_key", None)  # `serve`'s own --api-key is `api_key`
    if backend is not None:
        if not backend.startswith(("http://", "https://")):
            raise UsageError(f"--backend: must be an http:// or https:// URL, got {backend!r}")
        if key is not None and not key:
            raise UsageError("--api-key: must not be empty")
        model = args.model if args.model != DEFAULT_MODEL else None
        return RemoteSpec(backend, key or os.environ.get(API_KEY_ENV) or None, model)
    if key is not None:
        raise UsageError("--api-key: only with --backend URL")
    choice = getattr(args, "engine_process", None)
    process = choice == "on" if choice is not None else getattr(args, "command", None) in PROCESS_COMMANDS
    try:
        return EngineConfig(model=args.model, device=args.device, dtype=args.dtype,
                            max_batch_size=args.max_batch_size, max_prefill_tokens=args.max_prefill_tokens,
                            kv_budget_bytes=args.kv_budget, prefix_cache_bytes=args.prefix_cache,
                            interactive_tpot_slo=args.interactive_slo, compile=args.compile, threads=args.threads,
                            process=process)
    except ValueError as exc:
        raise UsageError(option_message(exc)) from exc


def start_engine(config: EngineConfig | RemoteSpec) -> ChatEngine:
    """Load the model and start an engine (imports torch and transformers on first use), or reach the remote
    server of a `RemoteSpec`.

    Args:
        config: the engine configuration, or a remote server.
    Returns:
        A started engine (call `shutdown()` when done).
    Raises:
        UsageError: the model cannot be loaded (unknown spec, missing package or file, no GPU), the engine
            cannot run its configuration on that device (`--compile cuda-graphs` without CUDA), or the server
            cannot be used (unreachable, key refused, model not served).
    """
    if isinstance(config, RemoteSpec):
        from ..remote import RemoteUnavailable

        try:
            return config.make().start()
        except RemoteUnavailable as exc:
            raise UsageError(str(exc)) from exc
    from backend import ModelLoadError, freeze_startup_objects, make_engine

    try:
        engine = make_engine(config).start()
    except ModelLoadError as exc:
        raise UsageError(str(exc)) from exc
    except ValueError as exc:  # a field the loaded device cannot run, named by its option
        raise UsageError(option_message(exc)) from exc
    freeze_startup_objects()  # a command runs until it exits: torch's objects out of the collector's scans
    return engine
