"""Headless runs of the engine for the command line: stream one chat answer, run an OpenAI Batch file.

Talks to the engine only through the public `backend` API. Errors the user must fix (a model that cannot be
loaded, an unreadable input file, a prompt that does not fit) raise `UsageError`; the CLI turns that into a
one-line message and exit status 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from backend import Engine, EngineConfig, ModelLoadError, Priority, SamplingParams

from . import openai_batch
from .openai_batch import BatchRequest, LineError


class UsageError(Exception):
    """A bad argument or input that the user must fix (the CLI exits with status 2)."""


def start_engine(config: EngineConfig) -> Engine:
    """Load the model and start an engine.

    Args:
        config: the engine configuration.
    Returns:
        A started `Engine` (call `shutdown()` when done).
    Raises:
        UsageError: the model cannot be loaded (unknown spec, missing package or file, no GPU).
    """
    try:
        return Engine(config).start()
    except ModelLoadError as exc:
        raise UsageError(str(exc)) from exc


def chat_messages(question: str, system: str | None = None) -> list[dict[str, str]]:
    """The chat messages for one question: an optional system message, then the user's question.

    Args:
        question: the user's message (must not be blank).
        system: a system prompt, or None for none.
    Returns:
        `[{"role": "system", ...}, {"role": "user", ...}]` (the system message only when given).
    Raises:
        UsageError: the question or the system prompt is blank.
    """
    if not question.strip():
        raise UsageError("the question must not be empty")
    if system is not None and not system.strip():
        raise UsageError("--system: must not be empty")
    return ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": question}]


def run_chat(config: EngineConfig, messages: list[dict[str, str]], params: SamplingParams,
             out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Stream one answer to `out`, writing (and flushing) each text delta as it arrives, then a newline.

    Args:
        config: engine configuration (the model is loaded here).
        messages: chat messages (see `chat_messages`).
        params: sampling parameters.
        out: where the answer goes (default `sys.stdout`); err: where failures are reported (`sys.stderr`).
    Returns:
        0 when the answer finished (`stop` or `length`), 1 when generation failed in the engine.
    Raises:
        UsageError: the model cannot be loaded or the prompt is invalid (e.g. longer than the context).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    engine = start_engine(config)
    try:
        last = asyncio.run(_stream_chat(engine, messages, params, out))
    finally:
        engine.shutdown()
    if last.finish_reason in ("stop", "length"):
        return 0
    print(f"baton: error: generation {last.finish_reason}: {last.error or 'no detail'}", file=err)
    return 1


async def _stream_chat(engine: Engine, messages, params: SamplingParams, out: IO[str]):
    last = None
    try:
        async for item in engine.generate(messages, params, priority=Priority.INTERACTIVE):
            if item.text:
                _write(out, item.text)
                out.flush()
            last = item
    except ValueError as exc:  # raised on the first iteration for an invalid prompt
        raise UsageError(str(exc)) from exc
    _write(out, "\n")
    out.flush()
    return last


def _write(out: IO[str], text: str) -> None:
    """Write text, replacing what the stream's encoding cannot represent instead of failing."""
    try:
        out.write(text)
    except UnicodeEncodeError:
        enc = getattr(out, "encoding", None) or "utf-8"
        out.write(text.encode(enc, "replace").decode(enc))


# ------------------------------------------------------------------------------------------- batch
@dataclass(frozen=True)
class BatchSummary:
    """What a batch run did.

    Attributes:
        ok, failed: output lines with a response / with an error.
        output_tokens: tokens the engine generated for this run.
        seconds: wall time from the first submission to the last result (model load excluded).
        load_seconds: model load time.
    """

    ok: int
    failed: int
    output_tokens: int
    seconds: float
    load_seconds: float

    @property
    def tokens_per_second(self) -> float:
        """Output tokens per second of wall time (0 when nothing ran)."""
        return self.output_tokens / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        return (f"{self.ok} ok, {self.failed} failed, {self.output_tokens} output tokens in {self.seconds:.2f} s "
                f"({self.tokens_per_second:.1f} tok/s; model load {self.load_seconds:.1f} s)")


def run_batch(config: EngineConfig, input_path: str | os.PathLike, output_path: str | os.PathLike,
              progress: bool | None = None, err: IO[str] | None = None) -> BatchSummary:
    """Run an OpenAI Batch API input file through the engine and write the output file atomically.

    Every valid line is submitted at once at `Priority.BATCH`, so the engine batches them; invalid lines
    get an error line without running. The output has one line per non-blank input line, in input order,
    and only appears (by rename) once complete. A summary line goes to `err`.

    Args:
        config: engine configuration (the model is loaded here, after the files are checked).
        input_path: the JSONL input file.
        output_path: where the JSONL output goes (replaced if it exists).
        progress: show a progress bar on `err`; None shows it when `err` is a terminal.
        err: where the progress bar and the summary go (default `sys.stderr`).
    Returns:
        The run's `BatchSummary`.
    Raises:
        UsageError: the input cannot be read, the output cannot be written, or the model cannot be loaded.
    """
    err = err or sys.stderr
    try:
        data = Path(input_path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the input file {str(input_path)!r}: {exc.strerror or exc}") from exc
    entries = openai_batch.parse_input(data)
    with _atomic_output(Path(output_path)) as out:
        t0 = time.perf_counter()
        engine = start_engine(config)
        load_seconds = time.perf_counter() - t0
        try:
            console = Console(file=err, stderr=err is sys.stderr)
            show = console.is_terminal if progress is None else progress
            lines, tokens, seconds = _run_entries(engine, entries, console, show)
        finally:
            engine.shutdown()
        for line in lines:
            out.write(openai_batch.dumps_line(line) + "\n")
    failed = sum(1 for line in lines if line["error"] is not None)
    summary = BatchSummary(len(lines) - failed, failed, tokens, seconds, load_seconds)
    print(f"baton: batch: {summary.line()}; wrote {output_path}", file=err)
    return summary


class _TokenRateColumn(ProgressColumn):
    """Output tokens so far and their rate over the task's elapsed time."""

    def render(self, task) -> Text:
        tokens = task.fields.get("tokens", 0)
        elapsed = task.elapsed or 0.0
        rate = tokens / elapsed if elapsed > 0 else 0.0
        return Text(f"{tokens} tok  {rate:,.1f} tok/s", style="progress.data.speed")


def _run_entries(engine: Engine, entries: list[BatchRequest | LineError], console: Console,
                 show: bool) -> tuple[list[dict], int, float]:
    """Run the valid entries concurrently. Returns (output lines in entry order, output tokens, seconds)."""
    lines: list[dict | None] = [None] * len(entries)
    jobs: list[tuple[int, BatchRequest, SamplingParams]] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, LineError):
            lines[i] = openai_batch.error_line(entry.custom_id, entry.code, entry.message)
            continue
        try:
            params = SamplingParams(**entry.sampling)
        except ValueError as exc:  # the engine's validation, naming the field
            lines[i] = openai_batch.error_line(entry.custom_id, "invalid_value", f"line {entry.line_no}: {exc}")
            continue
        jobs.append((i, entry, params))
    columns = [TextColumn("batch"), BarColumn(), MofNCompleteColumn(), TextColumn("requests"),
               _TokenRateColumn(), TimeElapsedColumn()]
    tokens = 0
    with Progress(*columns, console=console, disable=not show, transient=False) as bar:
        task = bar.add_task("batch", total=len(jobs), tokens=0)

        def on_token() -> None:
            nonlocal tokens
            tokens += 1
            bar.update(task, tokens=tokens)

        async def run_all() -> list[dict]:
            model = engine.model.name
            coros = [_run_one(engine, entry, params, model, on_token, lambda: bar.advance(task))
                     for _, entry, params in jobs]
            return await asyncio.gather(*coros)

        start = time.perf_counter()
        results = asyncio.run(run_all())
        seconds = time.perf_counter() - start
    for (i, _, _), line in zip(jobs, results):
        lines[i] = line
    return lines, tokens, seconds  # type: ignore[return-value]


async def _run_one(engine: Engine, entry: BatchRequest, params: SamplingParams, model: str,
                   on_token: Callable[[], None], on_done: Callable[[], None]) -> dict:
    """Run one request to the end; returns its output line (errors included, never raises ValueError)."""
    request_id = uuid.uuid4().hex
    parts: list[str] = []
    last = None
    try:
        async for item in engine.generate(entry.messages, params, priority=Priority.BATCH, request_id=request_id):
            parts.append(item.text)
            if item.token_id is not None:
                on_token()
            last = item
    except ValueError as exc:  # invalid prompt, e.g. longer than the context
        return openai_batch.error_line(entry.custom_id, "invalid_value", f"line {entry.line_no}: {exc}")
    finally:
        on_done()
    if last.finish_reason in ("stop", "length"):
        return openai_batch.success_line(entry.custom_id, request_id, model, "".join(parts), last.finish_reason,
                                         last.prompt_tokens, last.completion_tokens)
    code = "cancelled" if last.finish_reason == "cancelled" else "engine_error"
    return openai_batch.error_line(entry.custom_id, code, f"line {entry.line_no}: generation "
                                                          f"{last.finish_reason}: {last.error or 'no detail'}")


@contextlib.contextmanager
def _atomic_output(path: Path) -> Iterator[IO[str]]:
    """A text file that replaces `path` only when the block completes; on any exception it is removed.

    The temporary file is created up front (so an unwritable destination fails before the model loads) in the
    destination's folder (so the final rename is atomic), and gets the permissions of a newly created file.
    """
    if path.is_dir():
        raise UsageError(f"cannot write the output file {str(path)!r}: it is a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UsageError(f"cannot write the output file {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
