"""The stored side of `baton chat`: the conversation kept as a chat of the history database, as the TUI keeps its
chats, so it can be found, searched and continued there (or continued here with `--continue` / `--chat ID`).

A new conversation is stored as a chat at its first turn, titled after its first message (`app.chat.titles`) and
holding the settings it ran with (system prompt, temperature, max tokens, seed). Each turn stores the user's
message before it is sent, after the conversation's last message, and the answer through `AnswerRecorder`, the TUI's
recorder (created at the first token, flushed while it streams, finished with its stats). A continued chat sends
the branch it shows when it is opened (`Store.branch`), with the chat's own settings unless an option overrides
them for this run; each turn follows the previous one, whatever another process shows meanwhile.
With `--no-log` nothing is stored (a chat to continue is only read).

Errors the user must fix raise `UsageError` (exit status 2): a database that cannot be used (`StorageError`: a
missing folder of an explicit `--db`, a locked, corrupt or foreign file), an unknown chat id, no chat to continue.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import IO, TYPE_CHECKING, Any, Awaitable, Callable

from ..chat.answer import AnswerStats, stats_line
from ..chat.prompt import build_prompt
from ..chat.recorder import AnswerRecorder
from ..chat.settings import ChatSettings
from ..chat.titles import title_from
from .errors import UsageError

if TYPE_CHECKING:
    from backend import Engine, TokenOutput
    from storage import Chat, Store

class HistoryError(UsageError):
    """The database failed during the conversation (a `StorageError`): it ends (exit status 2)."""


#: seconds to wait for another process's write lock on the database before giving up
BUSY_TIMEOUT_S = 5.0

#: streams one answer: (engine, prompt, params, out, take each output) -> (last output, text); see chat_cmd
Stream = Callable[..., Awaitable[tuple["TokenOutput", str]]]


@dataclass(frozen=True)
class HistoryOptions:
    """Where `baton chat` keeps its conversation.

    Attributes:
        db: the database file; None for the default (`storage.default_db_path()`, its folder created).
        log: store the conversation (False: `--no-log`).
        continue_last: continue the most recently updated chat that is not archived (`-c`).
        chat_id: continue this chat (`--chat ID`).
    """

    db: str | None = None
    log: bool = True
    continue_last: bool = False
    chat_id: int | None = None

    @property
    def continues(self) -> bool:
        """Whether an existing chat is continued."""
        return self.continue_last or self.chat_id is not None


@dataclass
class _Said:
    """A turn of this run kept in memory when nothing is stored (what `build_prompt` reads)."""

    role: str
    content: str


class ChatHistory:
    """One `baton chat` conversation: its settings, what it has said so far, and where it is stored.

    Made by `open` (before the model loads, so a bad database or chat id fails at once); `answer` runs one
    turn; `close` closes the database. Attributes: `chat` (the stored chat; None until the first turn stores
    one, and with `--no-log` unless a chat is continued), `settings` (what every answer is generated with).
    """

    def __init__(self, store: Store | None, chat: Chat | None, settings: ChatSettings, said: list[Any],
                 log: bool) -> None:
        self.store, self.chat, self.settings, self.log = store, chat, settings, log
        self._said = said  # the shown branch (stored messages) and this run's turns, oldest first

    @classmethod
    async def open(cls, options: HistoryOptions, system: str | None, overrides: dict[str, Any]) -> ChatHistory:
        """Open the database (unless nothing is stored and nothing continued) and the chat to continue.

        Args:
            options: where the conversation is kept.
            system: `--system` (a new chat's system prompt; refused when a chat is continued).
            overrides: `ChatSettings` fields given as options (`temperature`, `max_tokens`, `seed`): a new chat's
                settings are the defaults with these; a continued chat's are its own with these, for this run.
        Raises:
            UsageError: the database cannot be used, the chat does not exist, there is no chat to continue,
                `--system` with a continued chat, or a setting is invalid (named by its option).
        """
        from storage import StorageError, Store

        store = None
        try:
            if options.log or options.continues:
                store = await Store.open(options.db, busy_timeout=BUSY_TIMEOUT_S)
            chat = await _chat_to_continue(store, options) if store is not None else None
            if chat is not None and system is not None:
                raise UsageError(f"--system: chat {chat.id} keeps its own system prompt (change it in the TUI's "
                                 "settings, F3, or start a new chat)")
            base = ChatSettings.of(chat) if chat is not None else ChatSettings(system_prompt=system)
            settings = replace(base, **overrides)
            _validate(settings)
            said = list((await store.branch(chat.id)).messages) if chat is not None and store is not None else []
        except BaseException as exc:
            if store is not None:
                await store.close()
            if isinstance(exc, StorageError):
                raise UsageError(str(exc)) from exc
            raise
        return cls(store, chat, settings, said, options.log)

    @property
    def said(self) -> list[Any]:
        """The conversation so far (stored messages or this run's turns: each has `role` and `content`)."""
        return list(self._said)

    async def answer(self, engine: Engine, text: str, out: IO[str], stream: Stream) -> tuple[TokenOutput, str, str]:
        """One turn: store the user's message (and the chat, at the first turn), stream the answer to `out` while
        it is recorded, and remember both for the next turn.

        Args:
            engine: a started engine.
            text: the user's message.
            out: where the answer's text goes.
            stream: `chat_cmd.stream_answer` (streams and writes the text, calling `take` on every output).
        Returns:
            (the last engine output, the answer text, its stats line: `42 tokens · TTFT 35 ms · 51.2 tok/s`).
        Raises:
            UsageError: the engine refused the prompt (what this turn stored is deleted again: a chat this turn
                created, or its user message).
            HistoryError: the database failed (`StorageError`).
            A cancelled turn (Ctrl-C) or a closed stdout keeps the partial answer, stored as `cancelled`.
        """
        from storage import StorageError

        try:
            return await self._answer(engine, text, out, stream)
        except StorageError as exc:
            raise HistoryError(str(exc)) from exc

    async def _answer(self, engine: Engine, text: str, out: IO[str], stream: Stream) -> tuple[TokenOutput, str, str]:
        params = self.settings.sampling_params()
        if not self.log or self.store is None:
            stats = AnswerStats()

            async def note(output: TokenOutput) -> None:
                stats.take(output)

            prompt = build_prompt(self.settings.system_prompt, [*self._said, _Said("user", text)])
            last, answer = await stream(engine, prompt, params, out, note)
            self._said += [_Said("user", text), _Said("assistant", answer)]
            return last, answer, stats_line(stats.completion_tokens, *stats.rates(), stats.finish_reason,
                                            stats.cached_tokens)

        created = self.chat is None
        if self.chat is None:
            self.chat = await self.store.create_chat(title_from(text), self.settings.system_prompt,
                                                     self.settings.to_params())
        # after this conversation's last message (the TUI may show another branch of the chat meanwhile)
        user = await self.store.add_message(self.chat.id, "user", text, self._said[-1].id if self._said else None)
        recorder = AnswerRecorder(self.store, self.chat.id, user.id, engine.model.name)
        prompt = build_prompt(self.settings.system_prompt, await self.store.thread(user.id))
        try:
            last, answer = await stream(engine, prompt, params, out, recorder.take)
        except UsageError:  # refused before any token: take back what this turn stored
            await self._take_back(user.id, created)
            raise
        except BaseException:  # Ctrl-C, a closed stdout, a failing store: keep what was said
            await recorder.finish("cancelled")
            raise
        message = await recorder.finish()
        self._said = await self.store.thread(message.id if message is not None else user.id)
        line = stats_line(message.completion_tokens, message.ttft_ms, message.tokens_per_s, message.finish_reason,
                          message.cached_tokens, message.dropped_messages) \
            if message is not None else stats_line(recorder.stats.completion_tokens, None, None, last.finish_reason)
        return last, answer, line

    async def _take_back(self, user_id: int, created: bool) -> None:
        assert self.store is not None and self.chat is not None
        if created:
            await self.store.delete_chat(self.chat.id)
            self.chat = None
        else:
            await self.store.delete_message(user_id)

    def describe(self) -> str:
        """What is continued, for the greeting: `chat 12 "Trip to Rome" (4 messages)`, or "" for a new chat."""
        if self.chat is None:
            return ""
        return f'chat {self.chat.id} "{self.chat.title}" ({len(self._said)} messages)'

    async def close(self) -> None:
        """Close the database (idempotent). Never raises: a failing close is not the conversation's failure."""
        if self.store is not None:
            store, self.store = self.store, None
            try:
                await asyncio.shield(store.close())
            except Exception:  # noqa: BLE001 - the answers are committed; nothing is left to save
                pass


async def _chat_to_continue(store: Store, options: HistoryOptions) -> Chat | None:
    """The chat `-c` / `--chat ID` names (None for a new conversation). Raises UsageError."""
    if options.chat_id is not None:
        chat = await store.get_chat(options.chat_id)
        if chat is None:
            raise UsageError(f"--chat: there is no chat {options.chat_id} in {store.path} "
                             "(the TUI lists the chats; 'baton chat' prints the id of the chat it stores)")
        return chat
    if options.continue_last:
        chats = await store.list_chats()
        if not chats:
            raise UsageError(f"--continue: there is no chat to continue in {store.path}")
        return chats[0]
    return None


#: `ChatSettings` field -> the option that sets it
_OPTIONS = {"temperature": "--temperature", "max_tokens": "--max-tokens", "seed": "--seed"}


def _validate(settings: ChatSettings) -> None:
    """Raises UsageError naming the option (or the chat's stored setting) of an invalid value."""
    try:
        settings.sampling_params()
    except (TypeError, ValueError) as exc:
        text = str(exc)
        field = text.split(":", 1)[0]
        if field in _OPTIONS:
            text = _OPTIONS[field] + text[len(field):]
        raise UsageError(text) from exc
