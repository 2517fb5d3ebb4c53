"""Generation sessions: every chat's answer runs as its own task, whatever chat the screen shows.

`Sessions` is the TUI's controller between the store, the engine and the screen (no widgets here). For one
turn it stores the user's message first (after the branch the chat shows), then streams the answer from
`Engine.generate` at interactive priority, with the conversation down to that message as the prompt, creating the assistant message at the first token, writing its text at least every
`flush_interval` seconds, and finishing it with its stats (`app.chat.recorder.AnswerRecorder`, the same
recorder agent tasks use). It posts `app.tui.messages` as it goes; the screen shows whichever chat it likes,
and `live(chat_id)` gives the text streamed so far.

A conversation longer than the model's context is fitted to it (`app.chat.context_fit`): its oldest turns are
left out (the system prompt and the newest message stay), counted with the engine's own tokenizer and chat
template off the event loop, and the same first turn is kept on the chat's later turns while they fit, so the
engine's prefix cache keeps serving the prompt's beginning. How many messages were left out is posted
(`PromptFitted`, so the screen says it while the answer streams) and stored with the answer (its stats line
says so). An engine that cannot count tokens (a remote one) gets the whole conversation.

Messages sent before the model is loaded wait (stored, marked queued) and start on `attach_engine`.
Failures raise (after posting `GenerationFailed`) so the worker that ran the turn reports them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Callable, Coroutine

from backend import Priority
from storage import AFTER_SHOWN, Chat, NotFoundError, Store
from storage import Message as StoredMessage

from ..chat.context_fit import ContextOverflow, fit_to_context
from ..chat.engine_api import prompt_token_counter
from ..chat.prompt import build_prompt, prompt_turns
from ..chat.recorder import FLUSH_INTERVAL_S, AnswerRecorder
from ..chat.settings import ChatSettings
from ..chat.titles import DEFAULT_TITLE, TITLE_LENGTH, title_from  # noqa: F401 (TITLE_LENGTH: re-exported)
from . import messages as m
from .live_answer import LiveAnswer

if TYPE_CHECKING:
    from backend import Engine, TokenOutput


Launch = Callable[[Coroutine[Any, Any, Any], str], object]
#: what a turn does before it is answered (store the user's message, ...), given the turn
Prepare = Callable[[LiveAnswer], Coroutine[Any, Any, None]]


class BusyError(RuntimeError):
    """The chat is already answering (stop it first)."""


class GenerationError(RuntimeError):
    """The engine could not answer (bad prompt, engine fault, model not loaded)."""


class Sessions:
    """Runs chats' turns concurrently and keeps what each one has streamed.

    Args:
        store: the open history store.
        post: called with each `app.tui.messages` message (e.g. a screen's `post_message`).
        launch: runs a coroutine as a background task named by its second argument (a Textual
            `run_worker`, or `asyncio.create_task` in tests); exceptions are the launcher's to report.
        flush_interval: most seconds between two writes of a streaming answer's text to the store.
        post_interval: seconds over which streamed text is gathered into one `TokensStreamed` (a message per
            token would flood the UI's queue ahead of the user's keys).
    """

    def __init__(self, store: Store, post: Callable[[Any], object], launch: Launch, flush_interval: float = FLUSH_INTERVAL_S,
                 post_interval: float = 0.05):
        self.store = store
        self.engine: Engine | None = None
        self.flush_interval = flush_interval
        self.post_interval = post_interval
        self._post = post
        self._launch = launch
        self.model_error: str | None = None  # why the model could not be loaded, if it could not
        self._live: dict[int, LiveAnswer] = {}
        self._titles: dict[str, str] = {}  # request id -> chat title, for the live panel
        self._first_kept: dict[int, int] = {}  # chat id -> the stored message its fitted prompt starts from

    # ---------------------------------------------------------------------------------- queries
    def live(self, chat_id: int) -> LiveAnswer | None:
        """The chat's turn in flight, or None."""
        return self._live.get(chat_id)

    def busy_chats(self) -> set[int]:
        """Chats with a turn in flight (storing, queued or generating)."""
        return set(self._live)

    def describe(self, request_id: str) -> tuple[str, str]:
        """`(label, kind)` of an engine request for the live panel, e.g. `("chat: Trip to Rome", "chat")`."""
        title = self._titles.get(request_id)
        if title is None:
            return (f"request {request_id[:8]}", "other")
        return (f"chat: {title}", "chat")

    def rename(self, chat_id: int, title: str) -> None:
        """Follow a chat's new title (for `describe`)."""
        gen = self._live.get(chat_id)
        if gen is not None:
            gen.title = title
            if gen.request_id in self._titles:
                self._titles[gen.request_id] = title

    # ---------------------------------------------------------------------------------- actions
    def send(self, chat: Chat, text: str) -> None:
        """Store `text` as the user's message after the branch `chat` shows, and answer it. Raises BusyError."""
        self._start(chat, lambda gen: self._store_user(chat, text, gen))

    def regenerate(self, chat: Chat) -> None:
        """Answer the last user message of the shown branch again. The answers it has are kept: the new one is
        their alternative (the same parent), shown once it is stored; they are posted as `AnswersSetAside`.
        Raises BusyError."""
        self._start(chat, lambda gen: self._set_answers_aside(chat, gen))

    def edit_and_resend(self, chat: Chat, message_id: int, text: str) -> None:
        """Replace user message `message_id` (and everything below it, in every branch) with `text`, then answer.
        Raises BusyError."""
        self._start(chat, lambda gen: self._replace(chat, message_id, text, gen))

    def stop(self, chat_id: int) -> bool:
        """Stop the chat's turn: the partial answer is kept and stored as `cancelled`. False if none ran.

        A queued turn ends at once; one in the engine posts `GenerationStopping` now and ends after the
        engine's step in flight."""
        gen = self._live.get(chat_id)
        if gen is None:
            return False
        if gen.state != "queued" and not gen.stop_requested:
            self._post(m.GenerationStopping(chat_id))
        gen.stop_requested = True
        if gen.state == "queued":
            self._live.pop(chat_id)
            self._post(m.GenerationFinished(chat_id, None, "cancelled", None))
            self._unanswered(gen)
        elif gen.state == "running" and self.engine is not None:
            try:
                self.engine.cancel(gen.request_id)
            except KeyError:  # not submitted yet: the stream cancels it at its first output
                pass
        return True

    def attach_engine(self, engine: Engine) -> None:
        """Use a started engine from now on and start the turns that waited for it."""
        self.engine = engine
        for gen in [g for g in self._live.values() if g.state == "queued"]:
            self._launch(self._generate(gen), f"answer chat {gen.chat_id}")

    def model_failed(self, error: str) -> None:
        """The model will not come: fail the turns that waited for it (their messages stay stored)."""
        self.model_error = error
        for gen in [g for g in self._live.values() if g.state == "queued"]:
            self._live.pop(gen.chat_id)
            self._post(m.GenerationFailed(gen.chat_id, None, f"the model is not loaded: {error}"))
            self._unanswered(gen)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop every turn in flight and wait (up to `timeout` s) until their partial answers are stored (as
        `interrupted` when the app cancelled their workers first, as it does when it closes)."""
        for chat_id in list(self._live):
            self.stop(chat_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(g.state != "queued" for g in self._live.values()) and loop.time() < deadline:
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------------------- the turn
    def _start(self, chat: Chat, prepare: Prepare) -> None:
        if chat.id in self._live:
            raise BusyError(f"{chat.title!r} is still answering (Esc stops it)")
        gen = self._live[chat.id] = LiveAnswer(chat.id, chat.title)
        self._launch(self._turn(gen, prepare), f"answer chat {chat.id}")

    async def _turn(self, gen: LiveAnswer, prepare: Prepare) -> None:
        try:
            await prepare(gen)
        except BaseException:
            self._live.pop(gen.chat_id, None)
            self._post(m.GenerationFinished(gen.chat_id, None, "cancelled", None))
            raise
        if gen.stop_requested:
            self._live.pop(gen.chat_id, None)
            self._post(m.GenerationFinished(gen.chat_id, None, "cancelled", None))
            self._unanswered(gen)
        elif self.engine is None and self.model_error is not None:
            self._live.pop(gen.chat_id, None)
            error = f"the model is not loaded: {self.model_error}"
            self._post(m.GenerationFailed(gen.chat_id, None, error))
            self._unanswered(gen)
            raise GenerationError(error)
        elif self.engine is None:
            gen.state = "queued"
            self._post(m.GenerationQueued(gen.chat_id, gen.alternatives))
        else:
            await self._generate(gen)

    async def _store_user(self, chat: Chat, text: str, gen: LiveAnswer, parent_id: Any = AFTER_SHOWN) -> None:
        message = await self.store.add_message(chat.id, "user", text, parent_id)
        gen.parent_id = message.id
        self._post(m.UserMessageStored(chat.id, message))
        if chat.title == DEFAULT_TITLE:
            await self._auto_title(chat, text)

    async def _auto_title(self, chat: Chat, text: str) -> None:
        """Name a fresh "New chat" after its first message."""
        stored = await self.store.list_messages(chat.id)
        if len(stored) == 1:
            title = title_from(text)
            renamed = await self.store.rename_chat(chat.id, title)
            self.rename(chat.id, title)
            self._post(m.ChatChanged(renamed))

    async def _set_answers_aside(self, chat: Chat, gen: LiveAnswer) -> None:
        """The turn answers the shown branch's last user message again, beside the answers it has."""
        branch = await self.store.branch(chat.id)
        users = [i for i, x in enumerate(branch.messages) if x.role == "user"]
        if not users:
            raise GenerationError("nothing to regenerate: the chat has no message of yours yet")
        question, after = branch.messages[users[-1]], branch.messages[users[-1] + 1:]
        answers = len(branch.alternatives[after[0].id]) if after else 0  # the shown answer and its alternatives
        gen.parent_id, gen.alternatives = question.id, answers + 1
        self._post(m.AnswersSetAside(chat.id, question.id))

    async def _replace(self, chat: Chat, message_id: int, text: str, gen: LiveAnswer) -> None:
        edited = await self.store.get_message(message_id)
        await self.store.delete_message(message_id)
        self._post(m.MessagesDeleted(chat.id, message_id, inclusive=True))
        await self._store_user(chat, text, gen, AFTER_SHOWN if edited is None else edited.parent_id)

    async def _generate(self, gen: LiveAnswer) -> None:
        """Stream one answer into the store and to the screen."""
        gen.state = "running"
        self._titles[gen.request_id] = gen.title
        self._post(m.GenerationStarted(gen.chat_id, gen.request_id, gen.alternatives))
        reason: str | None = None
        failure: BaseException | None = None
        try:
            await self._stream(gen)
        except asyncio.CancelledError:  # the app is closing: keep the partial answer
            reason = "interrupted"
            raise
        except NotFoundError:  # the chat was deleted while it answered: nothing left to store
            reason = "cancelled"
        except Exception as exc:
            failure = exc
            raise
        finally:
            await self._finish(gen, reason, failure)

    async def _stream(self, gen: LiveAnswer) -> None:
        engine = self.engine
        if engine is None:
            raise GenerationError("the model is not loaded")
        chat = await self.store.get_chat(gen.chat_id)
        if chat is None:
            raise GenerationError(f"chat {gen.chat_id} was deleted")
        settings = ChatSettings.of(chat)
        if gen.parent_id is None:
            raise GenerationError("nothing to answer: the message was not stored")
        thread = await self.store.thread(gen.parent_id)
        try:
            params = settings.sampling_params()
            prompt, dropped = await self._fit(engine, chat.id, settings.system_prompt, thread, params.max_tokens)
            if dropped:
                gen.dropped_messages = dropped
                if not gen.stop_requested:  # the screen says "stopping…" already
                    self._post(m.PromptFitted(gen.chat_id, dropped))
            gen.recorder = AnswerRecorder(self.store, chat.id, gen.parent_id, engine.model.name, self.flush_interval,
                                          dropped)
            outputs = engine.generate(prompt, params, Priority.INTERACTIVE, request_id=gen.request_id)
            async with contextlib.aclosing(outputs):  # leaving early (an error) cancels the request
                async for out in outputs:
                    await self._take(gen, out, engine)
        except ValueError as exc:  # the engine rejected the prompt or the params
            raise GenerationError(str(exc)) from exc
        if gen.recorder.stats.finish_reason == "error":
            raise GenerationError(gen.recorder.stats.error or "the engine failed")

    async def _fit(self, engine: Engine, chat_id: int, system_prompt: str | None, thread: list[StoredMessage],
                   max_tokens: int) -> tuple[list[dict[str, str]], int | None]:
        """The prompt for `thread` (the conversation down to the message answered) fitted to the engine's context,
        and how many earlier messages it leaves out (None: not fitted, the engine cannot count tokens).

        Room is kept for the answer's `max_tokens`, at most half the context (a `max_tokens` near the context
        would otherwise leave room for no history at all: such an answer ends at the context, `length`).

        Raises:
            ValueError: the engine refuses the prompt.
            GenerationError: the newest message with the system prompt alone leaves no room for an answer.
        """
        prompt = build_prompt(system_prompt, thread)
        count = prompt_token_counter(engine)
        if count is None:
            return prompt, None
        context = engine.max_model_len
        ids = [x.id for x in prompt_turns(thread)]
        first = self._first_kept.get(chat_id)
        start = ids.index(first) if first in ids else 0
        try:
            fitted = await asyncio.to_thread(fit_to_context, prompt, count, context, min(max_tokens, context // 2),
                                             start)
        except ContextOverflow:
            raise GenerationError(f"the message is too long for the model's context of {context} tokens, even "
                                  "with every earlier message left out") from None
        if fitted.dropped:
            self._first_kept[chat_id] = ids[fitted.start]
        else:
            self._first_kept.pop(chat_id, None)
        return fitted.messages, fitted.dropped

    async def _take(self, gen: LiveAnswer, out: TokenOutput, engine: Engine) -> None:
        """One engine output: post its text, store it (the recorder), and pass on a stop request."""
        if gen.stop_requested and not gen.cancel_sent and not out.finished:
            gen.cancel_sent = engine.cancel(gen.request_id) or True
        if out.text:
            gen.parts.append(out.text)
            self._schedule_post(gen)
        await gen.recorder.take(out)

    def _schedule_post(self, gen: LiveAnswer) -> None:
        if gen.flush is None:
            gen.flush = asyncio.get_running_loop().call_later(self.post_interval, self._post_text, gen)

    def _post_text(self, gen: LiveAnswer) -> None:
        """Post the text streamed since the last post, if any."""
        if gen.flush is not None:
            gen.flush.cancel()
            gen.flush = None
        text = gen.text
        if len(text) > gen.posted:
            self._post(m.TokensStreamed(gen.chat_id, gen.request_id, text[gen.posted:]))
            gen.posted = len(text)

    async def _finish(self, gen: LiveAnswer, reason: str | None, failure: BaseException | None) -> None:
        """Store the final text and stats, forget the turn, and tell the screen."""
        recorder = gen.recorder
        if failure is not None:
            reason = "error"
        elif reason is None:
            reason = (recorder.stats.finish_reason if recorder is not None else None) or "cancelled"
        message: StoredMessage | None = None
        try:
            if recorder is not None:
                message = await recorder.finish(reason)
        except NotFoundError:  # the chat was deleted while it answered
            message = None
        finally:
            self._post_text(gen)
            self._live.pop(gen.chat_id, None)
            self._titles.pop(gen.request_id, None)
            if reason == "error":
                self._post(m.GenerationFailed(gen.chat_id, gen.request_id, str(failure), message))
            else:
                self._post(m.GenerationFinished(gen.chat_id, gen.request_id, reason, message))
            if message is None:
                self._unanswered(gen)

    def _unanswered(self, gen: LiveAnswer) -> None:
        """The turn ended with nothing stored: a regenerate's answers set aside are what the chat shows again."""
        if gen.alternatives > 1:
            self._post(m.BranchChanged(gen.chat_id))
