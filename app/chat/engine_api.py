"""The engine interface the app depends on: what the TUI, the CLI, the job runner and the server call.

Two engines satisfy it: the in-process `backend.Engine` (a model on this machine) and
`app.remote.RemoteEngine` (any OpenAI-compatible server: vLLM, SGLang, llama.cpp, Ollama, another `baton
serve`). Code above this interface never asks which one it has; `tests/test_remote.py` checks that both are
`ChatEngine`s (`isinstance` on this runtime-checkable protocol).

`TokenOutput.token_id` is the generated token's id in process, and `REMOTE_TOKEN_ID` over the wire (ids are not
sent): the app only tests `token_id is not None` ("this output carries a token"), to count tokens and time the
first one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Protocol, runtime_checkable

if TYPE_CHECKING:
    from backend import DeviceMemory, EngineStats, Priority, SamplingParams, TokenOutput

#: The `token_id` of an output that carries a token whose id is not known (a remote engine's).
REMOTE_TOKEN_ID = -1


@runtime_checkable
class ModelInfo(Protocol):
    """What the app reads about the model: `name` (stored with every answer, shown in the TUI) and `device`
    (`cpu`, `cuda:0`, ...; `remote` for a remote engine, which has no device memory to read here)."""

    name: str
    device: Any


@runtime_checkable
class ChatEngine(Protocol):
    """An engine serving many requests at once, in priority classes.

    Attributes:
        model: the served model (`ModelInfo`); readable once started.
        max_model_len: tokens of one request's context, or None when unknown (set by `start`).
        started: whether the engine takes requests.
    """

    max_model_len: int | None

    @property
    def model(self) -> ModelInfo: ...

    @property
    def started(self) -> bool: ...

    def start(self) -> ChatEngine:
        """Make the engine ready (blocking: load the model, or reach the server). Returns self.

        Raises:
            ModelLoadError or `app.remote.RemoteUnavailable` (a `ConnectionError`): it cannot be made ready.
        """
        ...

    def shutdown(self) -> None:
        """Stop: unfinished requests end with `cancelled`. Idempotent."""
        ...

    def generate(self, prompt: Any, params: SamplingParams | None = None, priority: Priority = ...,
                 request_id: str | None = None) -> AsyncIterator[TokenOutput]:
        """Stream one request's outputs; the last one has a `finish_reason` (`stop`, `length`, `cancelled`,
        `error` with `error` set). Leaving the iteration early cancels the request.

        Args:
            prompt: chat messages `[{"role", "content"}]` (every engine); a string or token ids (in process).
        Raises:
            ValueError: on the first iteration, for a prompt or params the engine refuses (e.g. longer than the
                context).
        """
        ...

    def cancel(self, request_id: str) -> bool:
        """Cancel a live request (it ends with `cancelled`). Returns False if it had already finished.

        Raises:
            KeyError: an id the engine has never seen.
        """
        ...

    def stats(self) -> EngineStats:
        """The latest snapshot (never blocks on the network: a remote engine returns its last poll)."""
        ...

    def memory(self) -> DeviceMemory | None:
        """The engine's device memory now (on a CPU, the RSS of the process that holds the model), or None
        when there is none to read here (a remote engine). Never blocks for long: for the live panel."""
        ...


@runtime_checkable
class TokenCounter(Protocol):
    """An engine that counts a prompt's tokens with its own tokenizer and chat template (`backend.Engine`). A
    remote engine is not one: its server does not tokenize for us, so the app sends its prompts whole.

    Attributes:
        max_model_len: tokens of one request's context, or None when unknown.
    """

    max_model_len: int | None

    def tokenize(self, prompt: Any) -> list[int]:
        """The prompt's token ids (chat messages through the chat template, with the generation prompt).

        Raises:
            ValueError: a prompt the engine refuses (empty, not valid UTF-8, longer in characters than the
                context can ever hold: `backend.ContextLengthError`).
        """
        ...


def prompt_token_counter(engine: object) -> Callable[[list[dict[str, str]]], int] | None:
    """`count(messages)`: the prompt tokens of chat messages on `engine` (tokens), for
    `app.chat.context_fit.fit_to_context`; None when the engine cannot count them (not a `TokenCounter`, e.g. a
    remote engine) or its context is unknown.

    `count` blocks for as long as the tokenizer takes (run it off the event loop for long chats). A prompt the
    engine refuses by its length in characters alone (`backend.ContextLengthError`, before tokenizing it)
    counts as `max_model_len + 1` tokens: more than the context, which is all fitting needs to know. `count`
    raises ValueError for any other prompt the engine refuses.
    """
    if not isinstance(engine, TokenCounter) or engine.max_model_len is None:
        return None
    from backend import ContextLengthError

    counter, longest = engine, engine.max_model_len

    def count(messages: list[dict[str, str]]) -> int:
        try:
            return len(counter.tokenize(messages))
        except ContextLengthError:
            return longest + 1

    return count
