"""Baton's themes: they register on an App, can be switched to, don't clash with Textual's, and are legible."""

from __future__ import annotations

import pytest
from textual.app import App, ComposeResult
from textual.color import Color
from textual.theme import BUILTIN_THEMES
from textual.widgets import Label

from themes import BATON_THEMES, DEFAULT_THEME, register_themes


class ThemedApp(App):
    def on_mount(self) -> None:
        register_themes(self)

    def compose(self) -> ComposeResult:
        yield Label("baton")


def test_names_are_unique_and_not_builtin():
    names = [t.name for t in BATON_THEMES]
    assert len(BATON_THEMES) >= 3
    assert len(set(names)) == len(names)
    assert not set(names) & set(BUILTIN_THEMES)
    assert all(n.startswith("baton-") for n in names)
    assert DEFAULT_THEME in names


def test_dark_flags_match_the_background():
    for theme in BATON_THEMES:
        assert theme.dark == (Color.parse(theme.background).brightness < 0.5), theme.name


async def test_each_theme_registers_and_applies():
    app = ThemedApp()
    async with app.run_test() as pilot:
        available = app.available_themes
        for theme in BATON_THEMES:
            assert available[theme.name] is theme
            app.theme = theme.name
            await pilot.pause()
            assert app.theme == theme.name
            assert app.current_theme is theme
            bg = app.screen.styles.background
            assert bg == Color.parse(theme.background), theme.name
        assert "textual-dark" in app.available_themes  # built-ins stay


def _luminance(color: str) -> float:
    def channel(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = Color.parse(color).rgb
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio (1..21)."""
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize("theme", BATON_THEMES, ids=lambda t: t.name)
def test_text_is_legible(theme):
    assert contrast(theme.foreground, theme.background) >= 7  # WCAG AAA body text
    assert contrast(theme.foreground, theme.panel) >= 7
    for role in ("primary", "secondary", "accent", "warning", "error", "success"):
        assert contrast(getattr(theme, role), theme.background) >= 4.5, role  # WCAG AA: they colour text
    v = theme.variables
    assert contrast(v["block-cursor-foreground"], v["block-cursor-background"]) >= 4.5
