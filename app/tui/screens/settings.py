"""A chat's settings in a modal form: system prompt, temperature, top-p, max tokens, seed."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, TextArea

from ...chat.settings import ChatSettings, parse_settings

FIELDS = (("temperature", "Temperature", "0 = greedy; higher = more varied"),
          ("top_p", "Top-p", "in (0, 1]; 1 = off"),
          ("max_tokens", "Max tokens", "most tokens in one answer"),
          ("seed", "Seed", "blank = random; a number repeats answers"))


class SettingsScreen(ModalScreen[ChatSettings | None]):
    """Edit one chat's settings; dismisses with valid `ChatSettings` (Save) or None (Cancel).

    Values are checked by `backend.SamplingParams`; an invalid one is reported under the form and the
    dialog stays open.
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "save", "Save")]

    def __init__(self, title: str, settings: ChatSettings) -> None:
        super().__init__(classes="dialog-screen")
        self._title = title
        self._settings = settings

    def compose(self) -> ComposeResult:
        """The form, filled with the chat's current settings."""
        s = self._settings
        values = {"temperature": f"{s.temperature:g}", "top_p": f"{s.top_p:g}", "max_tokens": str(s.max_tokens),
                  "seed": "" if s.seed is None else str(s.seed)}
        with Vertical(classes="dialog", id="settings-dialog") as dialog:
            dialog.border_title = f"Settings · {self._title}"
            yield Label("System prompt", classes="field-label")
            yield TextArea(s.system_prompt or "", id="system_prompt", soft_wrap=True, compact=True,
                           placeholder="(none) e.g. You are a concise assistant.")
            with Grid(id="settings-grid"):
                for name, label, hint in FIELDS:
                    yield Label(label, classes="field-label")
                    yield Input(values[name], id=name, placeholder="random" if name == "seed" else "", compact=True)
                    yield Static(hint, classes="field-hint", markup=False)
            yield Static("", id="settings-error", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Save", id="save", variant="primary")

    def form(self) -> dict[str, str]:
        """The form's text, by field name."""
        values = {name: self.query_one(f"#{name}", Input).value for name, *_ in FIELDS}
        values["system_prompt"] = self.query_one("#system_prompt", TextArea).text
        return values

    @on(Input.Submitted)
    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        """Validate and close with the new settings, or show what is wrong."""
        error = self.query_one("#settings-error", Static)
        try:
            settings = parse_settings(self.form(), self._settings.extra)
        except ValueError as exc:
            error.update(f"⚠ {exc}")
            error.add_class("-shown")
            field = str(exc).split(":", 1)[0]
            if field.isidentifier():
                for widget in self.query(f"#{field}"):
                    widget.focus()
            return
        self.dismiss(settings)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        """Close without saving."""
        self.dismiss(None)
