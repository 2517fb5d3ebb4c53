"""`baton batch`: run an OpenAI Batch API input file through the engine, all lines at once.

Every valid line becomes one `engine.generate` at `Priority.BATCH`, all submitted together so the engine
batches them; invalid lines get an error line without running. The output (one line per non-blank input
line, in input order) is written to a temporary file and renamed into place only when complete. A rich
progress bar (requests done / total, output tokens and tokens/s) goes to stderr when it is a terminal, and
a one-line summary always does; stdout stays empty.
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

from backend import Engine, EngineConfig, Priority, SamplingParams

from . import openai_batch
from .headless import UsageError, start_engine
from .openai_batch import BatchRequest, LineError


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

    See the module docstring for what runs and what is written; the file format is `app.openai_batch`'s.

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
            console = Console(file=err)
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
