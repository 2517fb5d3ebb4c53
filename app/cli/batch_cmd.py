"""`baton batch`: run an OpenAI Batch API input file through the engine, all lines at once.

Every valid line becomes one `run_request` (`app.chat.run_request`) at `Priority.BATCH`, all submitted
together so the engine batches them; invalid lines get an error line without running. The output (one line
per non-blank input line, in input order) is written to a temporary file and renamed into place only when
complete; it is never the input file, and an input without requests is refused, both before the model
loads. A rich progress bar (requests done / total, output tokens and tokens/s) goes to stderr when it is a
terminal, and a one-line summary always does; stdout stays empty.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from backend import EngineConfig

from ..chat import batch_file
from ..chat.batch_file import BatchRequest, LineError
from ..chat.run_request import run_request
from ..jobs.atomic_output import OutputFileError, atomic_output
from .engine_options import start_engine
from .errors import UsageError

if TYPE_CHECKING:
    from backend import Engine


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

    See the module docstring for what runs and what is written; the file format is `app.chat.batch_file`'s.

    Args:
        config: engine configuration (the model is loaded here, after the files are checked), or a
            `RemoteSpec` (`--backend`).
        input_path: the JSONL input file.
        output_path: where the JSONL output goes (replaced if it exists; never the input file).
        progress: show a progress bar on `err`; None shows it when `err` is a terminal.
        err: where the progress bar and the summary go (default `sys.stderr`).
    Returns:
        The run's `BatchSummary`.
    Raises:
        UsageError: the input cannot be read or has no requests, the output is the input file (the same
            file by any path or link) or cannot be written, or the model cannot be loaded; all but the last
            before the model is loaded.
    """
    err = err or sys.stderr
    try:
        data = Path(input_path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the input file {str(input_path)!r}: {exc.strerror or exc}") from exc
    _refuse_overwriting_input(input_path, output_path)
    entries = batch_file.parse_input(data)
    if not entries:
        raise UsageError(f"{input_path}: {batch_file.NO_REQUESTS}")
    try:
        with atomic_output(Path(output_path)) as out:
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
                out.write(batch_file.dumps_line(line) + "\n")
    except OutputFileError as exc:  # raised before the model loads
        raise UsageError(str(exc)) from exc
    failed = sum(1 for line in lines if line["error"] is not None)
    summary = BatchSummary(len(lines) - failed, failed, tokens, seconds, load_seconds)
    print(f"baton: batch: {summary.line()}; wrote {output_path}", file=err)
    return summary


def _refuse_overwriting_input(input_path: str | os.PathLike, output_path: str | os.PathLike) -> None:
    """Raise UsageError when the output path names the input file: the same path, another path to it, a
    symbolic link to it or a hard link of it (the output would replace or rewrite the input)."""
    try:
        same = os.path.samefile(input_path, output_path)
    except OSError:  # no output file yet (or not one we can look at: writing it reports why)
        same = False
    if same:  # samefile compares the files (device and inode) after following links
        raise UsageError(f"the output file {str(output_path)!r} is the input file {str(input_path)!r}; "
                         "write the output to another file")


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
    requests = [(i, e) for i, e in enumerate(entries) if isinstance(e, BatchRequest)]
    for i, entry in enumerate(entries):
        if isinstance(entry, LineError):
            lines[i] = batch_file.error_line(entry.custom_id, entry.code, entry.message)
    columns = [TextColumn("batch"), BarColumn(), MofNCompleteColumn(), TextColumn("requests"),
               _TokenRateColumn(), TimeElapsedColumn()]
    tokens = 0
    with Progress(*columns, console=console, disable=not show, transient=False) as bar:
        task = bar.add_task("batch", total=len(requests), tokens=0)

        def on_token() -> None:
            nonlocal tokens
            tokens += 1
            bar.update(task, tokens=tokens)

        async def run_one(entry: BatchRequest) -> dict:
            line = await run_request(engine, entry, on_token=on_token)
            bar.advance(task)
            return line

        async def run_all() -> list[dict]:
            return await asyncio.gather(*(run_one(entry) for _, entry in requests))

        start = time.perf_counter()
        results = asyncio.run(run_all())
        seconds = time.perf_counter() - start
    for (i, _), line in zip(requests, results):
        lines[i] = line
    return lines, tokens, seconds  # type: ignore[return-value]
