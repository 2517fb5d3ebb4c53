"""`baton chat`: stream one answer, or hold a conversation over stdin, printing the answers to stdout and each
answer's stats line (the TUI's: tokens, TTFT, tok/s) to stderr.

The conversation is stored as a chat of the history database (`app.cli.chat_history`), so the TUI finds,
searches and continues it; `--continue` / `--chat ID` continue a stored chat, `--no-log` stores nothing.
Talks to the engine only through the public `backend` API. Errors the user must fix (a model that cannot be
loaded, a prompt that does not fit, text that is not valid UTF-8, a database that cannot be used, an unknown
chat) raise `UsageError`; `app.cli.main` turns that into a one-line message and exit status 2.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import itertools
import sys
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, Awaitable, Callable

from backend import EngineConfig, Priority

from ..chat.answer import is_complete
from ..chat.json_values import text_problem
from .chat_history import ChatHistory, HistoryError, HistoryOptions
from .engine_options import RemoteSpec, start_engine
from .errors import UsageError

if TYPE_CHECKING:
    from backend import Engine, SamplingParams, TokenOutput


def chat_messages(question: str, system: str | None = None) -> list[dict[str, str]]:
    """The chat messages for one question: an optional system message, then the user's question.

    Args:
        question: the user's message (must not be blank).
        system: a system prompt, or None for none.
    Returns:
        `[{"role": "system", ...}, {"role": "user", ...}]` (the system message only when given).
    Raises:
        UsageError: the question or the system prompt is blank or not valid UTF-8 text (an argument whose
            bytes are not UTF-8 reaches Python as lone surrogates).
    """
    if not question.strip():
        raise UsageError("the question must not be empty")
    if (problem := text_problem(question)) is not None:
        raise UsageError(f"the question is {problem}")
    return system_messages(system) + [{"role": "user", "content": question}]


def system_messages(system: str | None) -> list[dict[str, str]]:
    """`[{"role": "system", "content": system}]`, or `[]` for None.

    Raises:
        UsageError: the system prompt is blank or not valid UTF-8 text.
    """
    if system is None:
        return []
    if not system.strip():
        raise UsageError("--system: must not be empty")
    if (problem := text_problem(system)) is not None:
        raise UsageError(f"--system: {problem}")
    return [{"role": "system", "content": system}]


def run_chat(config: EngineConfig | RemoteSpec, question: str, *, system: str | None = None,
             overrides: dict[str, Any] | None = None, history: HistoryOptions = HistoryOptions(),
             out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Stream one answer to `out`, writing (and flushing) each text delta as it arrives, then a newline; then
    its stats line on `err` (`baton: chat 12 · 42 tokens · TTFT 35 ms · 51.2 tok/s`).

    Args:
        config: engine configuration (the model is loaded here, after the database and chat are opened),
            or a `RemoteSpec` (`--backend`).
        question: the user's message (checked by `chat_messages`).
        system: a new chat's system prompt, or None.
        overrides: `ChatSettings` fields given as options (`temperature`, `max_tokens`, `seed`).
        history: where the conversation is stored, or which chat it continues (`HistoryOptions`).
        out: where the answer goes (default `sys.stdout`); err: stats and failures (`sys.stderr`).
    Returns:
        0 when the answer finished (`stop` or `length`), 1 when generation failed in the engine.
    Raises:
        UsageError: the model cannot be loaded, the prompt is invalid (e.g. longer than the context), the
            database cannot be used or the chat to continue does not exist (see `ChatHistory.open`).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    chat_messages(question, system)
    with _conversation(config, history, system, overrides or {}) as (runner, chat, engine):
        return _turn(runner, chat, engine, question, out, err)


def run_conversation(config: EngineConfig | RemoteSpec, *, system: str | None = None, overrides: dict[str, Any] | None = None,
                     history: HistoryOptions = HistoryOptions(), inp: IO[str] | None = None,
                     out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """A conversation: every line read from `inp` is a user turn, answered (streamed) on `out` with the
    whole conversation so far as context (a continued chat's shown branch first), until end of input (Ctrl-D).
    Blank lines are skipped. Each answer's stats line goes to `err`.

    On a terminal a `> ` prompt is shown and a greeting goes to `err`. A turn that no longer fits in the
    model's context is reported on `err` and dropped (nothing of it is stored); the conversation goes on. A
    line that cannot be decoded ends the conversation with a `UsageError` (see `read_turn`).

    Args:
        config: engine configuration (the model is loaded once, here), or a `RemoteSpec` (`--backend`).
        system, overrides, history: as in `run_chat`.
        inp, out, err: default `sys.stdin`, `sys.stdout`, `sys.stderr`.
    Returns:
        0 at end of input, 1 when a generation failed in the engine.
    Raises:
        UsageError: the model cannot be loaded, the system prompt is blank, a line of `inp` is not text in
            its encoding (`read_turn`), the database cannot be used or the chat does not exist.
    """
    inp, out, err = inp or sys.stdin, out or sys.stdout, err or sys.stderr
    system_messages(system)
    interactive = _isatty(inp) and _isatty(out)
    with _conversation(config, history, system, overrides or {}) as (runner, chat, engine):
        if interactive:
            where = f" in {chat.describe()}" if chat.chat is not None else ""
            kept = "" if history.log else "; nothing is stored (--no-log)"
            print(f"baton: chatting with {engine.model.name}{where} (Ctrl-D to end){kept}", file=err)
        for line_no in itertools.count(1):
            if interactive:
                out.write("> ")
                out.flush()
            line = read_turn(inp, line_no)
            if not line:
                if interactive:
                    out.write("\n")
                return 0
            if not line.strip():
                continue
            try:
                status = _turn(runner, chat, engine, line.rstrip("\r\n"), out, err)
            except HistoryError:  # the database failed: nowhere to keep the turns
                raise
            except UsageError as exc:
                print(f"baton: error: {exc} (turn dropped; Ctrl-D and start again for a fresh context)", file=err)
                continue
            if status:
                return status
    return 0


@contextlib.contextmanager
def _conversation(config: EngineConfig | RemoteSpec, history: HistoryOptions, system: str | None,
                  overrides: dict[str, Any]) -> Iterator[tuple[asyncio.Runner, ChatHistory, Engine]]:
    """The database and chat (opened first: a bad one fails before the model loads), then the engine, on one
    event loop for the whole conversation (the store's connection lives on it); all closed at the end."""
    with asyncio.Runner() as runner:
        chat = runner.run(ChatHistory.open(history, system, overrides))
        try:
            engine = start_engine(config)
            try:
                yield runner, chat, engine
            finally:
                engine.shutdown()
        finally:
            runner.run(chat.close())


def _turn(runner: asyncio.Runner, chat: ChatHistory, engine: Engine, text: str, out: IO[str], err: IO[str]) -> int:
    """One user turn answered on `out`, its stats line on `err`; returns 0, or 1 when the generation failed.
    Raises UsageError (see `ChatHistory.answer`)."""
    last, _, stats = runner.run(chat.answer(engine, text, out, stream_answer))
    status = _report(last, err)
    if status == 0:
        where = f"chat {chat.chat.id} · " if chat.log and chat.chat is not None else ""
        print(f"baton: {where}{stats}", file=err)
    return status


def read_turn(inp: IO[str], line_no: int) -> str:
    """The next line of `inp` (with its line end; "" at end of input), decoded strictly.

    Bytes that are not text in the stream's encoding (UTF-8 on every usual system) are refused, not
    replaced: `U+FFFD` in place of what the user wrote would have the model answer a question nobody asked,
    and a script that pipes a file in needs a failure status it can act on rather than a silently altered
    conversation. Batch lines and job files refuse such input the same way. The bytes are read from the
    stream's binary buffer when it has one, so the error names the right line (a text stream decodes ahead,
    in blocks) and the lone surrogates of a `surrogateescape` stream (the POSIX locale) never appear.
    Args:
        inp: the input stream (a text stream, with or without a binary `buffer`).
        line_no: the 1-based number of this line, for the message.
    Raises:
        UsageError: `stdin line N: not valid UTF-8 text (byte 0xff at byte 6); baton chat reads UTF-8 text`.
    """
    buffer = getattr(inp, "buffer", None)
    encoding = getattr(inp, "encoding", None) or "utf-8"
    name = "UTF-8" if codecs.lookup(encoding).name == "utf-8" else encoding
    if buffer is None:
        line = inp.readline()
        problem = text_problem(line)
        if problem is not None:
            raise UsageError(f"stdin line {line_no}: {problem}")
        return line
    raw = buffer.readline()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise UsageError(f"stdin line {line_no}: not valid {name} text (byte 0x{raw[exc.start]:02x} at byte "
                         f"{exc.start}); baton chat reads {name} text") from None


async def stream_answer(engine: Engine, messages: list[dict[str, str]], params: SamplingParams, out: IO[str],
                        take: Callable[[TokenOutput], Awaitable[None]] | None = None) -> tuple[TokenOutput, str]:
    """Generate one answer at interactive priority, writing and flushing each text delta, then a newline.

    Args:
        engine: a started engine.
        messages: the chat so far, ending with the user's turn.
        params: sampling parameters.
        out: where the text goes.
        take: awaited with every engine output after its text is written (the answer recorder, or stats).
    Returns:
        (the last `TokenOutput`, which carries `finish_reason`; the whole answer text).
    Raises:
        UsageError: the engine rejected the prompt (e.g. longer than the context).
    """
    last = None
    parts: list[str] = []
    try:
        async for item in engine.generate(messages, params, priority=Priority.INTERACTIVE):
            if item.text:
                _write(out, item.text)
                out.flush()
                parts.append(item.text)
            last = item
            if take is not None:
                await take(item)
    except ValueError as exc:  # raised on the first iteration for an invalid prompt
        raise UsageError(str(exc)) from exc
    _write(out, "\n")
    out.flush()
    return last, "".join(parts)


def _report(last: TokenOutput, err: IO[str]) -> int:
    """0 for a finished answer; else print why it failed and return 1."""
    if is_complete(last.finish_reason):
        return 0
    print(f"baton: error: generation {last.finish_reason}: {last.error or 'no detail'}", file=err)
    return 1


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _write(out: IO[str], text: str) -> None:
    """Write text, replacing what the stream's encoding cannot represent instead of failing."""
    try:
        out.write(text)
    except UnicodeEncodeError:
        enc = getattr(out, "encoding", None) or "utf-8"
        out.write(text.encode(enc, "replace").decode(enc))
