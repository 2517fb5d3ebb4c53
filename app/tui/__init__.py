"""Baton's Textual TUI: many chats streaming at once, the job queue's screen, the live engine panel.

The only part of `app/` that imports Textual. It uses the chat core (`app.chat`), the job runner
(`app.jobs`), the store and the engine's public API.

| module | owns |
| --- | --- |
| `app.py` | `BatonApp` (thin: store, theme, preferences, job runner, failed workers), `run_tui`, `theme_names` |
| `sessions.py` | `Sessions`: every chat's turn as its own worker, store <-> engine, `LiveAnswer`s |
| `live_answer.py` | `LiveAnswer`: one chat's turn in flight and the text posted so far |
| `library.py` | `ChatLibrary`: the store's chat operations (list, open, create, rename, archive, delete, export) |
| `engine_loader.py` | loading the model off the UI thread |
| `messages.py` | the Textual messages (past-tense facts) workers and controllers post |
| `commands.py` | the command palette's provider |
| `preferences.py` | the saved theme and panel state (`preferences.json`) |
| `screens/`, `widgets/` | one screen / widget a module; widgets post messages and never call controllers |
| `baton.tcss` | the styles |
"""

from .app import BatonApp, run_tui, theme_names

__all__ = ["BatonApp", "run_tui", "theme_names"]
