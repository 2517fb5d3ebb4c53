"""Baton's own Textual themes, registered beside Textual's built-in ones.

- `baton-dark`: ink-blue night with a brass accent (the default).
- `baton-light`: warm paper with ink-blue and copper, for bright terminals.
- `baton-ember`: warm charcoal with ember orange and flame yellow.

Usage: `register_themes(app)` (e.g. in `App.on_mount` or `__init__`), then `app.theme = "baton-dark"`.
"""

from __future__ import annotations

from textual.app import App
from textual.theme import Theme

__all__ = ["BATON_THEMES", "DEFAULT_THEME", "register_themes"]

DEFAULT_THEME = "baton-dark"


def _variables(cursor_bg: str, cursor_fg: str, key: str, selection: str, border_blurred: str) -> dict[str, str]:
    """The component variables every Baton theme sets (the rest derive from the base colours)."""
    return {
        "block-cursor-background": cursor_bg,
        "block-cursor-foreground": cursor_fg,
        "block-cursor-text-style": "none",
        "footer-key-foreground": key,
        "input-selection-background": selection,
        "border-blurred": border_blurred,
        "button-color-foreground": cursor_fg,
        "scrollbar": f"{cursor_bg} 40%",
        "scrollbar-hover": f"{cursor_bg} 60%",
        "scrollbar-active": cursor_bg,
    }


BATON_DARK = Theme(
    name="baton-dark",
    primary="#6CA6E0",  # steel blue
    secondary="#8C9CC8",
    accent="#E2B65C",  # brass
    warning="#E6A23C",
    error="#E06C75",
    success="#7FBF7F",
    foreground="#D7DCE2",
    background="#11151C",
    surface="#19202A",
    panel="#222B37",
    dark=True,
    variables=_variables("#6CA6E0", "#11151C", "#E2B65C", "#6CA6E0 35%", "#2A3440"),
)

BATON_LIGHT = Theme(
    name="baton-light",
    primary="#2F5E9E",  # ink blue
    secondary="#5B6F91",
    accent="#A05A1C",  # copper
    warning="#946000",
    error="#B3261E",
    success="#3C7D4A",
    foreground="#2B2F36",
    background="#F7F4EC",  # paper
    surface="#EFEAE0",
    panel="#E4DDCF",
    dark=False,
    variables=_variables("#2F5E9E", "#F7F4EC", "#A05A1C", "#2F5E9E 25%", "#D6CFC0"),
)

BATON_EMBER = Theme(
    name="baton-ember",
    primary="#E8763A",  # ember
    secondary="#D0603F",
    accent="#F2C14E",  # flame
    warning="#F2A541",
    error="#F0565B",
    success="#8DB46A",
    foreground="#EADFD6",
    background="#1A1412",  # charcoal
    surface="#241C19",
    panel="#2F2521",
    dark=True,
    variables=_variables("#E8763A", "#1A1412", "#F2C14E", "#E8763A 35%", "#3A2E29"),
)

BATON_THEMES: list[Theme] = [BATON_DARK, BATON_LIGHT, BATON_EMBER]


def register_themes(app: App) -> None:
    """Register every theme in `BATON_THEMES` on `app` (Textual's built-ins stay available).

    Idempotent: registering again replaces the same entries.
    """
    for theme in BATON_THEMES:
        app.register_theme(theme)
