"""`EngineProcess`: the engine with its core in a child process, behind the same public API as `Engine`.

Why: the engine thread and a front end in one process share one GIL, and every torch op releases and retakes it.
While the front end runs Python (a Textual screen's layout and rendering, an HTTP server's JSON), each op of the
engine's forward waits for the GIL again (up to `sys.getswitchinterval()`, 5 ms, per op). Measured on the 2-core
CPU (`python -m benchmarks.tui_priority`, 2026-12-03): a chat alone in the TUI decoded at 119 ms a step against
47 ms for the same engine with no app around it (`benchmarks.priority`'s idle chat, 1 thread, that day) and 69-86
ms for a one-row engine alone in the same hour; a thread spinning in pure Python made a one-row step 6.5 s.
vLLM V1 separates its engine core from the API server the same way (`AsyncLLM` and `EngineCoreProc`, over ZMQ).

The parent (this class) keeps what the front end calls: validation and tokenization (`Engine.tokenize`, on the
caller's thread as before), request ids, `cancel`, `stats` and `memory`; the child runs an in-process `Engine`
(model, running batch, scheduler, detokenization) started with the same `EngineConfig`. They talk over one
`multiprocessing` pipe of pickled tuples:

    parent -> child   ("add", [(request_id, prompt_ids, SamplingParams, Priority), ...])   one scheduler iteration
                      ("cancel", request_id)
                      ("stop",)                                   unfinished requests end `cancelled`
    child -> parent   ("ready", ModelInfo, max_model_len, fixed KV budget bytes | None, K/V bytes per token)
                      ("failed", kind, message)                  the engine could not start
                      ("out", [TokenOutput, ...])                  every output since the last message
                      ("stats", EngineStats, DeviceMemory | None)  after steps, at most every `STATS_INTERVAL_S`
                      ("stopped",)

The child is spawned (never forked: the parent has threads). It exits when the parent's end of the pipe closes,
so it never outlives the front end. If it dies, every live request ends with `finish_reason="error"` and the
engine reports not started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .config import EngineConfig, Priority, SamplingParams
from .engine import Engine
from .memory import DeviceMemory, read_device_memory
from .process_gc import freeze_startup_objects
from .request import TokenOutput
from .stats import EngineStats

STATS_INTERVAL_S = 0.1
"""Most seconds between two stats snapshots the child sends (one per step at most; none while nothing changes)."""

MEMORY_INTERVAL_S = 0.5
"""Seconds between two device memory readings in the child."""


@dataclass(frozen=True)
class ModelInfo:
    """What the parent knows of the child's model (`LoadedModel` without the weights).

    Attributes:
        name: the spec it was loaded from. tokenizer: its tokenizer (a copy, pickled over). device, dtype:
        strings, e.g. `cpu`, `float32`. eos_token_ids: ids that end a request. max_model_len: longest context
        (tokens). vocab_size: output vocabulary size. load_seconds: the child's `load_model` time (s).
        source: as `LoadedModel.source`. weight_bytes: bytes of the parameters. pid: the child's process id.
    """

    name: str
    tokenizer: object
    device: str
    dtype: str
    eos_token_ids: frozenset[int]
    max_model_len: int
    vocab_size: int
    load_seconds: float
    source: str
    weight_bytes: int
    pid: int


class EngineProcess(Engine):
    """An `Engine` whose core (model, batch, scheduler) runs in a spawned child process.

    The public API is `Engine`'s: `start`, `shutdown`, `generate`, `generate_batch`, `cancel`, `stats`,
    `memory`, `tokenize`, `model` (a `ModelInfo`), `max_model_len`, `config`, `started`. Outputs and results
    are the same as the in-process engine's (greedy tokens equal, a seeded request draws the same tokens).

    Raises (besides `Engine`'s):
        ModelLoadError (`start`): the child could not load the model (the child's message; any other failure
            to start, e.g. out of memory, is reported as one too, with its exception's name).
        ValueError (`start`): a configuration the loaded device cannot run (as `Engine.start`).
        RuntimeError (`start`): the child exited before it was ready.
    """

    RUNS_CORE_HERE = False

    def __init__(self, config: EngineConfig | None = None, log_file: str | os.PathLike | None = None):
        """Args:
            config: the engine's configuration (`process` may be either: the child runs it in-process).
            log_file: where the child's standard output and error go (appended: warnings, progress bars, a
                crash's traceback), e.g. so that they do not draw over a TUI; None: this process's own.
        """
        super().__init__(config)
        self.log_file = None if log_file is None else os.fspath(log_file)
        self._proc = None
        self._conn = None
        self._send_lock = threading.Lock()
        self._emits: dict[str, Callable[[TokenOutput], None]] = {}
        self._reader: threading.Thread | None = None
        self._latest_stats = EngineStats.empty()
        self._latest_memory: DeviceMemory | None = None
        self._facts: tuple[int | None, int] = (None, 0)
        self._alive = False

    @property
    def started(self) -> bool:
        return self._alive

    def start(self) -> "EngineProcess":
        """Spawn the child, which loads the model and starts its engine; returns once it is ready.

        Raises:
            ModelLoadError: the model cannot be loaded (the child's error message), or the child failed to start
                otherwise (its exception's name and message).
            ValueError: a configuration the loaded device cannot run (as `Engine.start`).
            RuntimeError: the child exited before saying it was ready.
        """
        if self._alive:
            return self
        from .models import ModelLoadError

        ctx = multiprocessing.get_context("spawn")
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=_child_main, args=(child_end, self.config, self.log_file), name="baton-engine-core",
                           daemon=True)
        with _real_stderr():
            proc.start()
        child_end.close()
        try:
            msg = parent_end.recv()
        except (EOFError, OSError):
            proc.join(5)
            raise RuntimeError(f"the engine process exited before it was ready (exit code {proc.exitcode})") from None
        if msg[0] == "failed":
            proc.join(5)
            _, kind, message = msg
            raise ValueError(message) if kind == "value" else ModelLoadError(message)
        _, info, self.max_model_len, budget, bytes_per_token = msg
        self._loaded, self._facts = info, (budget, bytes_per_token)
        self._proc, self._conn, self._alive, self._stopped = proc, parent_end, True, False
        self._reader = threading.Thread(target=self._read, name="baton-engine-reader", daemon=True)
        self._reader.start()
        return self

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the child: unfinished requests end `cancelled`. Idempotent.

        Args:
            timeout: most seconds to wait for it to end (after the step in flight); then it is terminated.
        """
        if self._proc is None:
            return
        self._send(("stop",))
        if self._reader is not None:
            self._reader.join(timeout)
        self._proc.join(max(0.1, timeout))
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._conn.close()
        self._proc, self._reader, self._alive, self._stopped = None, None, False, True

    def stats(self) -> EngineStats:
        """The child's latest snapshot (sent after its steps, at most every `STATS_INTERVAL_S`)."""
        return self._latest_stats

    def memory(self) -> DeviceMemory | None:
        """The child's latest reading of its device's memory (bytes; its own RSS on a CPU, read every
        `MEMORY_INTERVAL_S`), or None before the first. Never raises: a reading that failed is left out."""
        return self._latest_memory

    # -------------------------------------------------------------------- Engine's hooks
    def _kv_facts(self) -> tuple[int | None, int]:
        return self._facts

    def _build_request(self, rid: str, ids: list[int], params: SamplingParams, priority: Priority,
                       emit: Callable[[TokenOutput], None]) -> "_Pending":
        return _Pending(rid, ids, params, priority, emit)

    def _submit(self, reqs: tuple[_Pending, ...]) -> None:
        with self._lock:
            for r in reqs:
                self._emits[r.request_id] = r.emit
        if not self._send(("add", [(r.request_id, r.prompt_ids, r.params, r.priority) for r in reqs])):
            for r in reqs:
                self._dispatch(TokenOutput(r.request_id, None, "", "error", len(r.prompt_ids), 0,
                                           error="the engine process is not running"))

    def _send_cancel(self, request_id: str) -> None:
        self._send(("cancel", request_id))

    # ------------------------------------------------------------------------------ the pipe
    def _send(self, msg: tuple) -> bool:
        """Send one message to the child. Returns False when it is gone."""
        with self._send_lock:
            if self._conn is None:
                return False
            try:
                self._conn.send(msg)
                return True
            except (OSError, ValueError, EOFError):
                return False

    def _read(self) -> None:
        """The reader thread: hand each output to its request's callback, keep the latest stats."""
        conn = self._conn
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            kind = msg[0]
            if kind == "out":
                for out in msg[1]:
                    self._dispatch(out)
            elif kind == "stats":
                self._latest_stats, memory = msg[1], msg[2]
                if memory is not None:
                    self._latest_memory = memory
            elif kind == "stopped":
                break
        self._alive = False
        with self._lock:
            orphans = list(self._emits)
        code = None if self._proc is None else self._proc.exitcode
        for rid in orphans:  # the child died (or stopped without a final output): fail them, lose nothing silently
            self._dispatch(TokenOutput(rid, None, "", "error", 0, 0,
                                       error=f"the engine process exited (exit code {code})"))

    def _dispatch(self, out: TokenOutput) -> None:
        """Hand one output to its request's callback; a final one ends the request here too."""
        with self._lock:
            emit = self._emits.pop(out.request_id, None) if out.finished else self._emits.get(out.request_id)
        if out.finished:
            self._forget(out.request_id)
        if emit is None:  # its consumer left earlier (below)
            return
        try:
            emit(out)
        except Exception:  # the consumer is gone (its event loop closed): stop spending compute on it
            if not out.finished:
                with self._lock:
                    self._emits.pop(out.request_id, None)
                self._send_cancel(out.request_id)


@dataclass(frozen=True)
class _Pending:
    """A request admitted in the parent, before it is sent to the child."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    priority: Priority
    emit: Callable[[TokenOutput], None]


# --------------------------------------------------------------------------------------- the child
def _child_main(conn, config: EngineConfig, log_file: str | None = None) -> None:
    """The child process: start an `Engine`, then relay commands in and outputs and stats out."""
    if log_file is not None:  # before torch and transformers are imported: they write to stderr
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    config = dataclasses.replace(config, process=False)  # the child's engine runs its core in-process
    if config.threads is None:  # a core for the front end: see `EngineConfig.threads`
        config = dataclasses.replace(config, threads=max(1, _cores() - 1))
    try:
        engine = Engine(config).start()
    except BaseException as exc:  # ModelLoadError, out of memory, a broken install: the parent raises it
        from .models import ModelLoadError

        kind = "model" if isinstance(exc, ModelLoadError) else "value" if isinstance(exc, ValueError) else "other"
        conn.send(("failed", kind, str(exc) if kind != "other" else f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    freeze_startup_objects()  # full collections would scan torch's and transformers' objects: `process_gc.py`
    lm = engine.model
    info = ModelInfo(lm.name, lm.tokenizer, str(lm.device), str(lm.dtype).removeprefix("torch."),
                     lm.eos_token_ids, lm.max_model_len, lm.vocab_size, lm.load_seconds, lm.source, lm.weight_bytes,
                     multiprocessing.current_process().pid)
    budget, bytes_per_token = engine._kv_facts()
    outputs: queue.SimpleQueue[TokenOutput | None] = queue.SimpleQueue()
    send_lock = threading.Lock()

    def send(msg: tuple) -> None:
        with send_lock:
            try:
                conn.send(msg)
            except (OSError, ValueError, EOFError):  # the parent is gone: the receiver stops the engine
                pass

    send(("ready", info, engine.max_model_len, budget, bytes_per_token))
    sender = threading.Thread(target=_relay, args=(engine, outputs, send), name="baton-engine-sender", daemon=True)
    sender.start()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent exited or closed the pipe
            msg = ("stop",)
        kind = msg[0]
        if kind == "add":
            reqs = tuple(engine._register(engine._build_request(rid, ids, params, priority, outputs.put))
                         for rid, ids, params, priority in msg[1])  # ids the parent checked: unique
            engine._submit(reqs)
        elif kind == "cancel":
            engine._send_cancel(msg[1])
        elif kind == "stop":
            engine.shutdown()
            outputs.put(None)
            sender.join()
            send(("stats", engine.stats(), None))
            send(("stopped",))
            break
    conn.close()


def _relay(engine: Engine, outputs: "queue.SimpleQueue[TokenOutput | None]", send: Callable[[tuple], None]) -> None:
    """The child's sender thread: outputs in batches (all that queued since the last send), stats when they
    change (at most every `STATS_INTERVAL_S`), memory every `MEMORY_INTERVAL_S`. Ends at a None output."""
    last_stats, last_sent, last_memory = None, 0.0, 0.0
    while True:
        batch, done = [], False
        try:
            item = outputs.get(timeout=STATS_INTERVAL_S)  # wait for the first, then take what else has queued
            while item is not None:
                batch.append(item)
                item = outputs.get_nowait()
            done = True
        except queue.Empty:
            pass
        if batch:
            send(("out", batch))
        now = time.monotonic()
        stats, memory = engine.stats(), None
        if now - last_memory >= MEMORY_INTERVAL_S:
            last_memory = now
            try:
                memory = read_device_memory(engine.model.device)
            except Exception:  # a reading that fails is left out (the panel shows none)
                pass
        if (stats is not last_stats and now - last_sent >= STATS_INTERVAL_S) or memory is not None:
            send(("stats", stats, memory))
            last_stats, last_sent = stats, now
        if done:
            return


def make_engine(config: EngineConfig, log_file: str | os.PathLike | None = None) -> Engine:
    """An unstarted engine for `config`: `EngineProcess` when `config.process` (its child's output going to
    `log_file`, see `EngineProcess`), else `Engine`."""
    return EngineProcess(config, log_file) if config.process else Engine(config)


@contextlib.contextmanager
def _real_stderr():
    """Spawn with a real `sys.stderr`: multiprocessing's resource tracker passes `sys.stderr.fileno()` to the
    process it starts, and a front end that captures stderr (Textual's print capture answers -1) makes every
    spawn fail with `ValueError: bad value(s) in fds_to_keep`."""
    try:
        usable = sys.stderr is not None and sys.stderr.fileno() >= 0
    except (AttributeError, OSError, ValueError):
        usable = False
    if usable:
        yield
        return
    saved, devnull = sys.stderr, None
    if sys.__stderr__ is not None:
        sys.stderr = sys.__stderr__
    else:
        sys.stderr = devnull = open(os.devnull, "w")
    try:
        yield
    finally:
        sys.stderr = saved
        if devnull is not None:
            devnull.close()


def _cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
