"""The command-line options that configure the engine, shared by every `baton` command that runs one (the TUI,
`chat`, `batch`, `jobs run`), and the mapping of `EngineConfig`'s field-named errors back to those options."""

from __future__ import annotations

import argparse
import re

from backend import DEFAULT_MODEL, EngineConfig

from .headless import UsageError

#: `EngineConfig` field (the first word of its ValueError messages) -> the option that sets it.
ENGINE_OPTIONS = {"model": "--model", "device": "--device", "dtype": "--dtype", "max_batch_size": "--max-batch-size",
                  "max_prefill_tokens": "--max-prefill-tokens"}


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


def option_message(exc: ValueError, options: dict[str, str] = ENGINE_OPTIONS) -> str:
    """`max_batch_size: must be ...` -> `--max-batch-size: must be ...` (the option the user typed)."""
    text = str(exc)
    m = re.match(r"(\w+): ", text)
    if m and m.group(1) in options:
        return options[m.group(1)] + text[len(m.group(1)):]
    return text


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The `EngineConfig` the parsed engine options describe.

    Raises:
        UsageError: an invalid value, named by its option.
    """
    try:
        return EngineConfig(model=args.model, device=args.device, dtype=args.dtype,
                            max_batch_size=args.max_batch_size, max_prefill_tokens=args.max_prefill_tokens)
    except ValueError as exc:
        raise UsageError(option_message(exc)) from exc
