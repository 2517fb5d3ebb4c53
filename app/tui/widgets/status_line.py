"""The status line under the chat: the model's state (loading, ready, failed) and what is answering."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import LoadingIndicator, Static


class StatusLine(Horizontal):
    """One line: a spinner while the model loads, the model state, and the number of chats answering."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._model = ""
        self._busy = 0

    def compose(self) -> ComposeResult:
        """A spinner (shown while loading) and the text."""
        yield LoadingIndicator(id="status-spinner")
        yield Static(id="status-text", markup=False)

    def loading(self, model: str) -> None:
        """The model is loading."""
        self._show(f"Loading {model}… (you can type already: messages wait for the model)", "loading")

    def ready(self, model: str, device: str) -> None:
        """The model is ready."""
        self._show(f"{model} · {device}", "ready")

    def failed(self, error: str) -> None:
        """The model failed to load."""
        self._show(f"Model failed to load: {error}", "failed")

    def set_busy(self, count: int) -> None:
        """How many chats are answering now."""
        self._busy = count
        self._render_text()

    def _show(self, text: str, state: str) -> None:
        self._model = text
        for name in ("loading", "ready", "failed"):
            self.set_class(name == state, f"-{name}")
        self.query_one("#status-spinner").display = state == "loading"
        self._render_text()

    def _render_text(self) -> None:
        busy = f"  ·  ● {self._busy} answering" if self._busy else ""
        self.query_one("#status-text", Static).update(self._model + busy)
