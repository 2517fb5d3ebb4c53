"""Chat settings: the system prompt and sampling parameters stored with each chat, and the one set of chat
defaults (the TUI's new chats and `baton chat` both start from them).

A chat's `params` JSON holds `temperature`, `top_p`, `max_tokens` and `seed`; other keys a user put there
(e.g. `top_k`, `stop`, `ignore_eos`) are kept and passed on to `SamplingParams`. Validation is
`backend.SamplingParams`'s own: its `ValueError` names the field, and the settings form shows it as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backend import SamplingParams

if TYPE_CHECKING:
    from storage import Chat

DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 1.0
DEFAULT_MAX_TOKENS = 512
EDITABLE = ("temperature", "top_p", "max_tokens", "seed")


@dataclass(frozen=True)
class ChatSettings:
    """What a chat sends to the engine besides its messages.

    Attributes:
        system_prompt: sent first as a system message; None (or blank) for none.
        temperature, top_p, max_tokens, seed: as in `backend.SamplingParams`.
        extra: other `SamplingParams` fields stored in the chat's params (kept untouched).
    """

    system_prompt: str | None = None
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    max_tokens: int = DEFAULT_MAX_TOKENS
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_chat(cls, system_prompt: str | None, params: dict[str, Any]) -> ChatSettings:
        """The settings stored with a chat (missing keys take the defaults)."""
        params = dict(params or {})
        known = {k: params.pop(k) for k in EDITABLE if k in params}
        return cls(system_prompt=system_prompt, extra=params, **known)

    def to_params(self) -> dict[str, Any]:
        """The chat's `params` JSON object."""
        return {**self.extra, "temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "seed": self.seed}

    def sampling_params(self) -> SamplingParams:
        """The engine's sampling parameters. Raises ValueError naming the bad field."""
        return SamplingParams(**self.to_params())

    @classmethod
    def of(cls, chat: Chat) -> ChatSettings:
        """The settings stored with a chat (a `storage.Chat` row)."""
        return cls.from_chat(chat.system_prompt, chat.params)

    def summary(self) -> str:
        """A one-line description, e.g. `temperature 0.7 · top-p 1 · max 512 tokens · seed 7`."""
        parts = [f"temperature {self.temperature:g}", f"top-p {self.top_p:g}", f"max {self.max_tokens} tokens"]
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        if self.system_prompt:
            parts.append("system prompt")
        return " · ".join(parts)


def parse_settings(form: dict[str, str], extra: dict[str, Any] | None = None) -> ChatSettings:
    """Settings from the text of the settings form, validated by `SamplingParams`.

    Args:
        form: `system_prompt`, `temperature`, `top_p`, `max_tokens` and `seed` as typed (seed may be blank).
        extra: other params of the chat to keep.
    Returns:
        Valid settings.
    Raises:
        ValueError: `"<field>: <why>"` for the first invalid field.
    """
    system = form.get("system_prompt", "").strip() or None
    settings = ChatSettings(
        system_prompt=system,
        temperature=_number(form, "temperature", float),
        top_p=_number(form, "top_p", float),
        max_tokens=_number(form, "max_tokens", int),
        seed=_number(form, "seed", int) if form.get("seed", "").strip() else None,
        extra=dict(extra or {}),
    )
    settings.sampling_params()  # raises ValueError("<field>: ...")
    return settings


def _number(form: dict[str, str], name: str, kind: type) -> Any:
    text = form.get(name, "").strip()
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{name}: must be {what}, got {text!r}") from None
