"""`baton serve`: the engine behind an OpenAI-compatible HTTP API (`app.server`), for any OpenAI client.

    baton serve [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--db PATH] [engine options]

Binds 127.0.0.1 by default; another host needs an API key (`--api-key`, or the `BATON_API_KEY` environment
variable), which every route but `/health` then requires. Checked before the model loads, in this order: the
options, the database, the address (a port in use is a usage error at once). Exit status: 0 after SIGTERM
(requests in flight drained), 130 after Ctrl-C, 2 bad usage. FastAPI and uvicorn are imported only when the
command runs, so `baton --help` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from .engine_options import engine_config, parse_size, start_engine
from .errors import UsageError

API_KEY_ENV = "BATON_API_KEY"
DEFAULT_PORT = 8000


def add_serve_subparser(subparsers: Any, engine_parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `serve` command to `baton`'s subparsers.

    Args:
        subparsers: what `ArgumentParser.add_subparsers()` returned.
        engine_parent: the parent parser with the engine options (`engine_options.add_engine_options`).
    Returns:
        The `serve` parser; parsed arguments carry `handler` (args -> exit status).
    """
    parser = subparsers.add_parser(
        "serve", parents=[engine_parent], help="serve the engine over an OpenAI-compatible HTTP API",
        description="Serve the engine over an OpenAI-compatible HTTP API: /v1/chat/completions (streaming "
                    "too), /v1/completions, /v1/models, the Batch API (/v1/files, /v1/batches, run on the "
                    "persistent job queue at batch priority), /metrics (Prometheus), /v1/baton/stats and "
                    "/health. A request's 'priority' field takes interactive (the default), agent, batch, or "
                    "vLLM's integers (<= 0 interactive, 1 agent, >= 2 batch). SIGTERM drains: requests in "
                    "flight finish (or are cut at --drain-timeout), queued batch lines stay queued.")
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: %(default)s; another than loopback needs an API key)")
    group.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s; 0: any free one)")
    group.add_argument("--api-key", metavar="KEY", default=None,
                       help=f"require 'Authorization: Bearer KEY' on every route but /health (default: "
                            f"${API_KEY_ENV} if set, else no key)")
    group.add_argument("--served-model-name", metavar="NAME", default=None,
                       help="the model's name in the API (default: the --model value); requests naming "
                            "another model get 404")
    group.add_argument("--db", metavar="PATH", default=None,
                       help="database of the batch jobs and uploaded files (default: baton.db in the user data "
                            "folder, shared with the TUI and 'baton jobs'; the folder of a PATH must exist)")
    group.add_argument("--max-body-size", type=parse_size, default=16 * 2**20, metavar="SIZE",
                       help="largest JSON request body, e.g. 16MiB (default); larger ones get 413")
    group.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                       help="on SIGTERM, seconds requests in flight may run before they are cut (default: "
                            "%(default)s)")
    parser.set_defaults(handler=handle_serve)
    return parser


def api_key(args: argparse.Namespace) -> str | None:
    """The key from `--api-key`, else `$BATON_API_KEY` (unset or empty: none).

    Raises:
        UsageError: `--api-key` given empty.
    """
    if args.api_key is not None:
        if not args.api_key:
            raise UsageError("--api-key: must not be empty")
        return args.api_key
    return os.environ.get(API_KEY_ENV) or None


def handle_serve(args: argparse.Namespace) -> int:
    """Run `baton serve` (see the module docstring). Raises UsageError for anything that stops it starting."""
    from storage import StorageError

    from ..server import ServerSettings
    from ..server.auth import check_bind
    from ..server.serve import bind_socket, check_store, serve

    key = api_key(args)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port: must be in 0..65535, got {args.port}")
    try:
        check_bind(args.host, key)
        settings = ServerSettings(model_name=args.served_model_name or args.model, api_key=key,
                                  max_body_bytes=args.max_body_size, drain_timeout_s=args.drain_timeout)
    except ValueError as exc:
        raise UsageError(str(exc).replace("drain_timeout_s:", "--drain-timeout:")) from exc
    config = engine_config(args)
    try:
        asyncio.run(check_store(args.db))
    except StorageError as exc:
        raise UsageError(str(exc)) from exc
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host} port {args.port}: {exc.strerror or exc}") from exc
    with sock:
        engine = start_engine(config)
        return serve(engine, sock, args.db, settings)
