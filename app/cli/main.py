"""The `baton` command line: the TUI (`baton`, `baton tui`), `baton chat [QUESTION]` and
`baton batch INPUT.jsonl -o OUTPUT.jsonl`.

`baton` with no command opens the Textual TUI (options `--model`, `--db`, `--theme`, `--device`, `--dtype`,
`--max-batch-size`). `baton chat` without a question holds a conversation over stdin (one user turn per line,
Ctrl-D ends); it is stored as a chat in the TUI's database (`--db`, `-c/--continue`, `--chat ID`, `-n/--no-log`).

Exit status: 0 success (a batch run that completed, even with failed lines); 1 a generation that failed in
the engine, or stdout closed early; 2 bad usage (bad option value, unknown model or theme, unreadable input or
unwritable output, a history database that cannot be used); 130 interrupted. Errors are one
`baton: error: ...` line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from importlib import metadata
from typing import NoReturn

from backend import SamplingParams

from ..chat.completions import DEFAULT_MAX_TOKENS
from ..chat.settings import DEFAULT_MAX_TOKENS as CHAT_MAX_TOKENS
from ..chat.settings import DEFAULT_TEMPERATURE as CHAT_TEMPERATURE
from . import batch_cmd, chat_cmd
from .engine_options import (ENGINE_OPTIONS, RemoteSpec, add_engine_options, add_remote_options, engine_config,
                             option_message)
from .errors import UsageError
from .jobs_cmd import add_jobs_subparser
from .serve_cmd import add_serve_subparser

# Engine/sampling field names (first word of their ValueError messages) -> the option that sets them.
_OPTION_OF_FIELD = {**ENGINE_OPTIONS, "max_tokens": "--max-tokens", "temperature": "--temperature", "seed": "--seed"}


def _version() -> str:
    try:
        return metadata.version("baton-chat")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `baton` with its `tui`, `chat` and `batch` subcommands.

    Returns:
        An `argparse.ArgumentParser`; parsed arguments carry `command` (None, "tui", "chat" or "batch") and
        `handler` (the function that runs it; the TUI's when there is no command).
    """
    local = argparse.ArgumentParser(add_help=False)  # `serve`: a local model only (its --api-key is its own)
    add_engine_options(local)
    engine = argparse.ArgumentParser(add_help=False, parents=[local])  # the rest may use a remote engine
    add_remote_options(engine)

    tui = argparse.ArgumentParser(add_help=False)
    group = tui.add_argument_group("TUI")
    group.add_argument("--db", metavar="PATH", help="chat history database (default: baton.db in the user data "
                       "folder, created if needed; the folder of a PATH given here must exist)")
    group.add_argument("--theme", metavar="NAME", help="theme for this run (default: the one last chosen in the app)")
    group.add_argument("--listen", metavar="[HOST:]PORT",
                       help="also serve the TUI's engine as an OpenAI-compatible API there (host default "
                            "127.0.0.1; another host needs --listen-key), so agents share the chat's model and "
                            "batch")
    group.add_argument("--listen-key", metavar="KEY", default=None,
                       help="the API key --listen requires on every route but /health (default: $BATON_API_KEY "
                            "if set, else none)")

    parser = argparse.ArgumentParser(
        prog="baton", parents=[engine, tui],
        description="Baton: a local LLM chat app on an in-process batched inference engine. "
                    "Without a command it opens the chat TUI.",
        epilog="Run 'baton COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.set_defaults(handler=_tui)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("tui", parents=[engine, tui], help="open the chat TUI (the default)",
                   description="Open the chat TUI: many chats at once, history in SQLite, a live engine panel."
                   ).set_defaults(handler=_tui)

    chat = sub.add_parser("chat", parents=[engine],
                          help="stream the answer to a question on stdout (no question: a conversation over stdin)",
                          description="Stream the answer to QUESTION to stdout (sent as chat messages). "
                                      "Without QUESTION: a conversation, one user turn per line of stdin, "
                                      "each answer streamed to stdout; Ctrl-D (end of input) ends it.")
    chat.add_argument("question", nargs="?", metavar="QUESTION", help="the question (the user message)")
    chat.add_argument("--system", metavar="PROMPT", help="system prompt sent before the question (a new chat's)")
    chat.add_argument("--temperature", type=float, metavar="T",
                      help=f"sampling temperature, 0 for greedy (default: a continued chat's, else {CHAT_TEMPERATURE})")
    chat.add_argument("--max-tokens", type=int, metavar="N",
                      help=f"most tokens in the answer (default: a continued chat's, else {CHAT_MAX_TOKENS})")
    chat.add_argument("--seed", type=int, metavar="N",
                      help="seed for reproducible sampling (default: a continued chat's, else none)")
    _add_history_options(chat)
    chat.set_defaults(handler=_chat)

    batch = sub.add_parser(
        "batch", parents=[engine], help="run an OpenAI Batch API JSONL file (/v1/chat/completions)",
        description="Run every line of an OpenAI Batch API input file (url /v1/chat/completions) through the "
                    "engine at batch priority, all at once, and write the OpenAI Batch output file: one line per "
                    "input line, in input order; failed lines have response null and an error. Body fields "
                    "honoured: messages, max_tokens/max_completion_tokens (default "
                    f"{DEFAULT_MAX_TOKENS}), temperature (default 1), top_p (default 1), seed, stop, and vLLM's "
                    "top_k and ignore_eos; model is ignored. Fields that cannot be honoured fail their line.")
    batch.add_argument("input", metavar="INPUT.jsonl", help="OpenAI Batch API input file")
    batch.add_argument("-o", "--output", metavar="OUTPUT.jsonl", required=True,
                       help="output file (written atomically; replaced if it exists; not the input file)")
    batch.set_defaults(handler=_batch)
    add_jobs_subparser(sub, engine)
    add_serve_subparser(sub, local)
    return parser


def _add_history_options(chat: argparse.ArgumentParser) -> None:
    """`baton chat`'s history options: where the conversation is stored, and which chat it continues."""
    group = chat.add_argument_group("history", "The conversation is stored as a chat, as the TUI stores its "
                                    "chats: open, search or continue it there, or here with -c / --chat.")
    group.add_argument("--db", metavar="PATH", help="chat history database (default: baton.db in the user data "
                       "folder, the TUI's; the folder of a PATH given here must exist)")
    which = group.add_mutually_exclusive_group()
    which.add_argument("-c", "--continue", dest="continue_chat", action="store_true",
                       help="continue the most recently updated chat (its shown branch and settings)")
    which.add_argument("--chat", type=int, metavar="ID", help="continue the chat with this id")
    group.add_argument("-n", "--no-log", action="store_true",
                       help="store nothing (a chat continued with -c / --chat is only read)")


def main(argv: list[str] | None = None) -> int:
    """Run the `baton` command line.

    Args:
        argv: the arguments (without the program name); None reads `sys.argv[1:]`.
    Returns:
        The exit status: 0 success, 1 generation failed (or stdout closed early), 2 bad usage,
        130 interrupted.
        Never raises for bad arguments or inputs: they are reported as one `baton: error: ...` line on stderr.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or an argparse usage error (already printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return args.handler(args)
    except UsageError as exc:
        print(f"baton: error: {exc}", file=sys.stderr)
        return 2
    except StdoutClosed as exc:
        print(f"baton: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("baton: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`baton chat ... | head`): stop quietly
        with contextlib.suppress(OSError, ValueError):  # keep the exit-time flush from failing again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # last: the ones above are Exceptions too
        if not _interrupted(exc):
            raise
        print("baton: interrupted", file=sys.stderr)
        return 130


def run() -> NoReturn:
    """The `baton` program (the console script, `python -m app.cli`): `main()` on the process's arguments, then
    the process ends at once with its exit status.

    When `main` returns, everything is stored and closed (the store, the engine's requests, output files);
    output is flushed here. What is skipped is the interpreter's teardown: after the TUI had closed it spent
    2-6 s collecting and freeing torch's, transformers' and Textual's objects (`gc` over ~450,000 objects, the
    tokenizer's BPE tables; measured with py-spy on SmolLM2 on a busy 2-core machine), with the terminal
    given back but no prompt (issue #10.5).
    """
    status = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # closed, or a reader gone: nothing more can be said
            if stream is not None:
                stream.flush()
    os._exit(status)


class StdoutClosed(Exception):
    """Standard output is closed (`baton chat >&-`): there is nowhere to write the answer (exit status 1)."""


def _interrupted(exc: BaseException) -> bool:
    """Whether `exc` comes from a Ctrl-C: some libraries turn a KeyboardInterrupt raised inside their lazy
    imports into another exception (transformers: `ModuleNotFoundError: Could not import module ...`), with the
    KeyboardInterrupt as its cause or context."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _option_message(exc: ValueError) -> str:
    """`temperature: must be >= 0` -> `--temperature: must be >= 0` (the option the user typed)."""
    return option_message(exc, _OPTION_OF_FIELD)


def _chat(args: argparse.Namespace) -> int:
    if sys.stdout is None:  # checked before the model loads
        raise StdoutClosed("standard output is closed: nowhere to write the answer")
    if args.question is None and sys.stdin is None:
        raise UsageError("standard input is closed: give the question as an argument, or pipe the conversation in")
    overrides = {name: value for name in ("temperature", "max_tokens", "seed")
                 if (value := getattr(args, name)) is not None}
    try:  # the values given, checked before the database or the model is opened
        SamplingParams(**{"max_tokens": CHAT_MAX_TOKENS, "temperature": CHAT_TEMPERATURE, **overrides})
    except ValueError as exc:
        raise UsageError(_option_message(exc)) from exc
    config = engine_config(args)
    history = chat_cmd.HistoryOptions(db=args.db, log=not args.no_log, continue_last=args.continue_chat,
                                      chat_id=args.chat)
    if args.question is None:
        return chat_cmd.run_conversation(config, system=args.system, overrides=overrides, history=history)
    return chat_cmd.run_chat(config, args.question, system=args.system, overrides=overrides, history=history)


def _tui(args: argparse.Namespace) -> int:
    config = engine_config(args)
    from ..tui import run_tui, theme_names  # Textual is imported only when the TUI runs

    if args.theme is not None and args.theme not in theme_names():
        raise UsageError(f"--theme: unknown theme {args.theme!r}; choose one of {', '.join(theme_names())}")
    listen = _listen_address(args)
    if isinstance(config, RemoteSpec):
        if listen is not None:
            raise UsageError("--listen: serves the in-process engine; not with --backend")
        return run_tui(None, args.db, args.theme, engine=config.make())
    if listen is not None:
        return run_tui(config, args.db, args.theme, listen=listen)
    return run_tui(config, args.db, args.theme)


def _listen_address(args: argparse.Namespace) -> tuple[str, int, str | None] | None:
    """(host, port, key) of `--listen [HOST:]PORT` and `--listen-key` (else `$BATON_API_KEY`), or None.

    Raises:
        UsageError: not `[HOST:]PORT` with a port in 0..65535, or an empty key.
    """
    if args.listen is None:
        if args.listen_key is not None:
            raise UsageError("--listen-key: only with --listen")
        return None
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen: must be [HOST:]PORT with a port in 0..65535, got {args.listen!r}")
    if args.listen_key is not None and not args.listen_key:
        raise UsageError("--listen-key: must not be empty")
    return host.strip("[]") or "127.0.0.1", int(port), args.listen_key or os.environ.get("BATON_API_KEY") or None


def _batch(args: argparse.Namespace) -> int:
    batch_cmd.run_batch(engine_config(args), args.input, args.output)
    return 0
