"""Helpers shared by the TUI tests (Pilot driving, waiting, stored conversations)."""

from __future__ import annotations

import pytest

import asyncio
import json
import time
from pathlib import Path
from typing import Callable

from rich.color import ColorSystem
from textual._xterm_parser import XTermParser
from textual.geometry import Region

from app.tui.screens.chat import ChatScreen
from app.tui.widgets.chat_list import ChatList
from app.tui.widgets.chat_view import ChatView
from app.tui.widgets.prompt_input import PromptInput
from storage import Store

SIZE = (120, 36)


def write_preferences(folder: Path, **prefs) -> None:
    """Write `preferences.json` in a `BATON_CONFIG_DIR` folder (e.g. `show_panel=False`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preferences.json").write_text(json.dumps(prefs), encoding="utf-8")


async def wait_for(pilot, condition: Callable[[], object], timeout: float = 60.0, what: str = "condition"):
    """Let the app run until `condition()` is truthy (returns its value); fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await pilot.pause(0.05)


def chat_screen(pilot) -> ChatScreen:
    """The app's main screen."""
    screen = pilot.app.chat_screen
    assert screen is not None
    return screen


def open_chat_id(pilot) -> int | None:
    """The id of the chat the view shows."""
    return chat_screen(pilot).query_one(ChatView).chat_id


async def ready(pilot) -> ChatScreen:
    """Wait for the chat screen and the engine, and for the chat list's first load."""
    await wait_for(pilot, lambda: pilot.app.chat_screen is not None and pilot.app.chat_screen.is_mounted,
                   what="the chat screen")
    screen = chat_screen(pilot)
    await wait_for(pilot, lambda: screen.sessions.engine is not None, what="the model")
    chat_list = screen.query_one(ChatList)
    await wait_for(pilot, lambda: chat_list.loaded, what="the chat list")
    if chat_list.chat_ids:  # the newest chat opens by itself
        await wait_for(pilot, lambda: open_chat_id(pilot) is not None, what="the newest chat to open")
    await pilot.pause(0.1)
    return screen


async def new_chat(pilot, press: bool = True) -> int:
    """Press Ctrl+N (or run its action) and wait until the new chat is open; returns its id."""
    before = open_chat_id(pilot)
    if press:
        await pilot.press("ctrl+n")
    else:
        chat_screen(pilot).action_new_chat()
    return await wait_for(pilot, lambda: (cid := open_chat_id(pilot)) != before and cid, what="a new chat")


async def send(pilot, text: str, press: bool = False) -> None:
    """Put `text` in the prompt and submit it: with the Enter key when `press` (Pilot then waits up to a
    second for the process to go idle, which it is not while the engine streams), else through the action
    Enter runs."""
    prompt = chat_screen(pilot).query_one(PromptInput)
    prompt.focus()
    prompt.load_text(text)
    if press:
        await pilot.press("enter")
    else:
        prompt.action_submit()
    await wait_for(pilot, lambda: prompt.text == "" and not prompt.pending, what="the prompt to be accepted")


def type_burst(pilot, data: str) -> None:
    """Type `data` as a terminal delivers a fast typist's (or tmux's) burst: the bytes (e.g. `"\\x7f\\x7fy."`:
    two Backspaces, `y`, `.`) go through Textual's own input parser, and every key it makes is posted at once, as
    the driver's input thread does with one read of several bytes. (`pilot.press` waits for the app to go idle
    after every key, which hides any reordering.) Wait for the outcome with `wait_for`."""
    driver = pilot.app._driver
    for event in XTermParser().feed(data):
        driver.process_message(event)


def cells_in_256_colours(app, region: Region) -> dict[tuple[int, int], tuple[str, int | None, int | None, bool]]:
    """What a 256-colour terminal (`TERM=xterm-256color`, no `COLORTERM`) shows in a region of the screen: per
    cell, its character, foreground and background palette entries and reverse video. Textual writes true
    colours that the terminal driver downgrades with rich's `Color.downgrade`, as done here."""
    def entry(color) -> int | None:
        return None if color is None else color.downgrade(ColorSystem.EIGHT_BIT).number

    cells = {}
    for y, strip in enumerate(app.screen._compositor.render_strips()):
        x = 0
        for segment in strip:
            style = segment.style
            for char in segment.text:
                if region.contains(x, y):
                    cells[x, y] = (char, entry(style and style.color), entry(style and style.bgcolor),
                                   bool(style and style.reverse))
                x += 1
    return cells


async def choose_chat(pilot, chat_id: int) -> None:
    """Highlight a chat in the list and choose it (what Enter on the list does), then wait until it is open."""
    chat_list = chat_screen(pilot).query_one(ChatList)
    chat_list.highlighted = chat_list.chat_ids.index(chat_id)
    chat_list.action_select()
    await wait_for(pilot, lambda: open_chat_id(pilot) == chat_id, what=f"chat {chat_id} to open")


async def idle(pilot, timeout: float = 180.0) -> None:
    """Wait until no chat is answering."""
    sessions = chat_screen(pilot).sessions
    await wait_for(pilot, lambda: not sessions.busy_chats(), timeout, what="every answer to finish")
    await pilot.pause(0.1)


async def stored_conversation(db: Path) -> dict[str, int]:
    """`populate` a database file (opened and closed here)."""
    async with await Store.open(db) as store:
        return await populate(store)


async def populate(store: Store) -> dict[str, int]:
    """Store two chats with a finished exchange each (fixed stats); returns their ids ("rome", "paris")."""
    rome = await store.create_chat("Trip to Rome", None, {"temperature": 0.7, "max_tokens": 512})
    user = await store.add_message(rome.id, "user", "Plan **three days** in Rome, please.")
    answer = await store.start_assistant_message(rome.id, user.id, "random:tiny")
    await store.finish_message(
        answer.id, "Day 1: the *Colosseum*.\n\n```python\nprint('ciao')\n```\n\nDay 2: the Vatican.",
        "stop", 14, 42, 35.0, 51.2)
    paris = await store.create_chat("Capital of France", "You are terse.", {"temperature": 0.0})
    user = await store.add_message(paris.id, "user", "What is the capital of France?")
    answer = await store.start_assistant_message(paris.id, user.id, "random:tiny")
    await store.finish_message(answer.id, "Paris.", "stop", 20, 3, 12.0, 80.0)
    return {"rome": rome.id, "paris": paris.id}


def run(coro):
    """Run a coroutine to completion from synchronous test code."""
    return asyncio.run(coro)


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    """Preferences in a throwaway folder, with the live panel closed (autouse where imported)."""
    folder = tmp_path / "config"
    write_preferences(folder, show_panel=False)
    monkeypatch.setenv("BATON_CONFIG_DIR", str(folder))
    return folder


def record_notifications(app) -> list[tuple[str, str, str]]:
    """Wrap `app.notify`; returns the list of (severity, title, message) it fills."""
    notes: list[tuple[str, str, str]] = []
    original = app.notify

    def notify(message, *, title="", severity="information", **kwargs):
        notes.append((severity, title, str(message)))
        return original(message, title=title, severity=severity, **kwargs)

    app.notify = notify
    return notes
