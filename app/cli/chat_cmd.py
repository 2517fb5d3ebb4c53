"""`baton chat`: stream one answer, or hold a conversation over stdin, printing to stdout.

Talks to the engine only through the public `backend` API. Errors the user must fix (a model that cannot be
loaded, a prompt that does not fit, text that is not valid UTF-8) raise `UsageError`; `app.cli.main` turns
that into a one-line message and exit status 2.
"""

from __future__ import annotations

import asyncio
import codecs
import itertools
import sys
from typing import IO, TYPE_CHECKING

from backend import EngineConfig, Priority, SamplingParams

from ..chat.answer import is_complete
from ..chat.json_values import text_problem
from .engine_options import start_engine
from .errors import UsageError

if TYPE_CHECKING:
    from backend import Engine, TokenOutput


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


def run_chat(config: EngineConfig, messages: list[dict[str, str]], params: SamplingParams,
             out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Stream one answer to `out`, writing (and flushing) each text delta as it arrives, then a newline.

    Args:
        config: engine configuration (the model is loaded here), or a `RemoteSpec` (`--backend`).
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
        last, _ = asyncio.run(stream_answer(engine, messages, params, out))
    finally:
        engine.shutdown()
    return _report(last, err)


def run_conversation(config: EngineConfig, params: SamplingParams, system: str | None = None,
                     inp: IO[str] | None = None, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """A conversation: every line read from `inp` is a user turn, answered (streamed) on `out` with the
    whole conversation so far as context, until end of input (Ctrl-D). Blank lines are skipped.

    On a terminal a `> ` prompt is shown and a greeting goes to `err`. A turn that no longer fits in the
    model's context is reported on `err` and dropped; the conversation goes on. A line that cannot be decoded
    ends the conversation with a `UsageError` (see `read_turn`).

    Args:
        config: engine configuration (the model is loaded once, here), or a `RemoteSpec` (`--backend`).
        params: sampling parameters for every answer.
        system: a system prompt, or None.
        inp, out, err: default `sys.stdin`, `sys.stdout`, `sys.stderr`.
    Returns:
        0 at end of input, 1 when a generation failed in the engine.
    Raises:
        UsageError: the model cannot be loaded, the system prompt is blank, or a line of `inp` is not text in
            its encoding (`read_turn`).
    """
    inp, out, err = inp or sys.stdin, out or sys.stdout, err or sys.stderr
    messages = system_messages(system)
    interactive = _isatty(inp) and _isatty(out)
    engine = start_engine(config)
    try:
        if interactive:
            print(f"baton: chatting with {engine.model.name} (Ctrl-D to end)", file=err)
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
            turn = messages + [{"role": "user", "content": line.rstrip("\r\n")}]
            try:
                last, text = asyncio.run(stream_answer(engine, turn, params, out))
            except UsageError as exc:
                print(f"baton: error: {exc} (turn dropped; Ctrl-D and start again for a fresh context)", file=err)
                continue
            if _report(last, err):
                return 1
            messages = turn + [{"role": "assistant", "content": text}]
    finally:
        engine.shutdown()


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


async def stream_answer(engine: Engine, messages: list[dict[str, str]], params: SamplingParams,
                        out: IO[str]) -> tuple[TokenOutput, str]:
    """Generate one answer at interactive priority, writing and flushing each text delta, then a newline.

    Args:
        engine: a started engine.
        messages: the chat so far, ending with the user's turn.
        params: sampling parameters.
        out: where the text goes.
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
