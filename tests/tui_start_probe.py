"""Run by `tests/test_tui_start.py` in a fresh interpreter: start the TUI (Pilot, 80x24, `random:tiny`) with
the model load held until the first frame has been looked at, type a message as a person would, then let the
model load. Prints one `REPORT {json}` line.

    python tests/tui_start_probe.py DB_PATH

The hold is an event, not a delay: the chat screen's `load_engine` waits for it, so what the report says
about the first frame holds on a machine of any speed.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

torch_importers: list[str] = []  # the threads that imported torch (normally one)


class SeeTorch(importlib.abc.MetaPathFinder):
    """Notes which thread imports torch first; finds nothing itself."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            torch_importers.append(threading.current_thread().name)
        return None


sys.meta_path.insert(0, SeeTorch())

import app.tui.screens.chat as chat_module  # noqa: E402
from app.tui import BatonApp  # noqa: E402
from app.tui.widgets.status_line import StatusLine  # noqa: E402
from backend import EngineConfig  # noqa: E402
from storage import Store  # noqa: E402

release = threading.Event()
real_load = chat_module.load_engine


def held_load(*args):
    release.wait(120)
    return real_load(*args)


chat_module.load_engine = held_load


async def pause_until(pilot, condition, what: str) -> None:
    for _ in range(2400):  # 120 s at most
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def main(db: str) -> dict:
    report: dict = {"torch_after_import": "torch" in sys.modules}
    # the engine core in a child process, as `baton` runs it (`--engine-process`, on for the TUI)
    app = BatonApp(config=EngineConfig(model="random:tiny", device="cpu", process=True), db_path=db)
    report["torch_after_app"] = "torch" in sys.modules
    report["engine_after_app"] = app.engine is not None
    async with app.run_test(size=(80, 24)) as pilot:
        await pause_until(pilot, lambda: app.chat_screen is not None and app.chat_screen.is_mounted, "the screen")
        screen = app.chat_screen
        await pilot.pause()
        report["status_at_first_frame"] = str(screen.query_one(StatusLine).query_one("#status-text").render())
        report["first_frame_shows_loading"] = "Loading" in app.export_screenshot()
        report["torch_at_first_frame"] = "torch" in sys.modules
        report["engine_at_first_frame"] = app.engine is not None
        await pilot.press(*"hello", "enter")  # typed while the model loads: it waits, it is not lost
        await pause_until(pilot, lambda: screen.sessions.busy_chats(), "the message to be taken")
        report["torch_while_typing"] = "torch" in sys.modules
        release.set()
        await pause_until(pilot, lambda: screen.sessions.engine is not None, "the model")
        await pause_until(pilot, lambda: not screen.sessions.busy_chats(), "the answer")
    async with await Store.open(db) as store:
        chats = await store.list_chats()
        stored = await store.list_messages(chats[0].id) if chats else []
    report["stored"] = [(x.role, x.content if x.role == "user" else x.finish_reason) for x in stored]
    report["torch_importers"] = torch_importers
    report["engine_stopped"] = app.engine is not None and not app.engine.started
    return report


if __name__ == "__main__":
    print("REPORT", json.dumps(asyncio.run(main(sys.argv[1]))))
