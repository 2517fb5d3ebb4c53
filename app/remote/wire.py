"""`SamplingParams` and `Priority` as the fields of an OpenAI chat-completions request, and a stream's errors
as one-line messages."""

from __future__ import annotations

from typing import Any

from backend import Priority, SamplingParams


def request_fields(params: SamplingParams, priority: Priority, baton: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(keyword arguments of `chat.completions.create`, its `extra_body`) for one request.

    OpenAI's own fields: `max_tokens`, `temperature`, `top_p`, `seed` and `stop` when set. Beyond them
    (`extra_body`): vLLM's `top_k` (when > 0) and `ignore_eos` (when true), and the priority: Baton's name
    (`"interactive"`, `"agent"`, `"batch"`) to a `baton serve`, else vLLM's integer (0, 1, 2: lower runs
    sooner under `vllm serve --scheduling-policy priority`; servers without priorities ignore it).
    """
    fields: dict[str, Any] = {"max_tokens": params.max_tokens, "temperature": params.temperature,
                              "top_p": params.top_p}
    if params.seed is not None:
        fields["seed"] = params.seed
    if params.stop:
        fields["stop"] = [params.stop] if isinstance(params.stop, str) else list(params.stop)
    extra: dict[str, Any] = {"priority": Priority(priority).name.lower() if baton else int(priority)}
    if params.top_k > 0:
        extra["top_k"] = params.top_k
    if params.ignore_eos:
        extra["ignore_eos"] = True
    return fields, extra


def fault_message(exc: BaseException, url: str) -> str:
    """A network or server fault as one line for the chat: `the remote engine at URL failed: ...`."""
    status = getattr(exc, "status_code", None)
    detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if status is not None:
        return f"the remote engine at {url} answered HTTP {status}: {detail}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause):
        detail = f"{detail} ({cause})"
    return f"the remote engine at {url} failed: {detail}"
