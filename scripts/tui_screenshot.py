"""Save an SVG screenshot of the TUI: two chats answering at once, the live panel open.

    .venv/bin/python scripts/tui_screenshot.py                       # -> docs/screenshots/chat-with-panel.svg
    .venv/bin/python scripts/tui_screenshot.py --model random:tiny -o /tmp/shot.svg

It runs the real app headless (Pilot) on a throwaway database and config folder, sends a question in two
chats, and takes the picture while both stream (after `--tokens` tokens of the shown answer).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUESTIONS = ("Write a Python function that checks whether a string is a palindrome.",
             "Plan a three-day trip to Rome: one line per day.")


async def shoot(model: str, output: Path, size: tuple[int, int], tokens: int) -> None:
    from app.tui.preferences import Preferences, save_preferences
    from app.tui import BatonApp
    from app.tui.widgets.chat_list import ChatList
    from app.tui.widgets.prompt_input import PromptInput
    from backend import EngineConfig

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BATON_CONFIG_DIR"] = tmp
        save_preferences(Preferences(theme="baton-dark", show_panel=True))
        app = BatonApp(config=EngineConfig(model=model, device="cpu"), db_path=Path(tmp) / "baton.db")
        async with app.run_test(size=size) as pilot:
            screen = await _until(pilot, lambda: app.chat_screen if app.chat_screen and
                                  app.chat_screen.sessions.engine else None, 120)
            prompt = screen.query_one(PromptInput)
            prompt.cursor_blink = False
            chats = []
            for _ in QUESTIONS:
                before = screen.pane.chat.id if screen.pane.chat else None
                screen.action_new_chat()
                chats.append((await _until(pilot, lambda: screen.pane.chat and screen.pane.chat.id != before
                                           and screen.pane.chat)).id)
                await screen.store.update_chat_settings(chats[-1], None,
                                                        {"temperature": 0.3, "max_tokens": 400, "seed": 1})
            for chat_id, question in zip(reversed(chats), reversed(QUESTIONS)):  # the last one is open
                if screen.pane.chat.id != chat_id:
                    chat_list = screen.query_one(ChatList)
                    chat_list.highlighted = chat_list.chat_ids.index(chat_id)
                    chat_list.action_select()
                    await _until(pilot, lambda: screen.pane.chat.id == chat_id)
                prompt.load_text(question)
                prompt.action_submit()
                await _until(pilot, lambda: screen.sessions.live(chat_id))
            shown = chats[0]
            await _until(pilot, lambda: len(screen.sessions.live(shown).parts) >= tokens, 120)
            screen.query_one(ChatList).highlight_chat(shown)
            await pilot.pause(0.6)  # one panel refresh
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(app.export_screenshot(title="Baton"), encoding="utf-8")
            for chat_id in list(screen.sessions.busy_chats()):
                screen.sessions.stop(chat_id)
    print(f"wrote {output}")


async def _until(pilot, condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the app")
        await pilot.pause(0.05)
    return value


def main() -> None:
    """Parse the options and take the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model spec (default: %(default)s)")
    parser.add_argument("-o", "--output", type=Path, default=REPO / "docs" / "screenshots" / "chat-with-panel.svg")
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=44)
    parser.add_argument("--tokens", type=int, default=45,
                        help="tokens of the shown answer before the shot (SmolLM2 ends it at 64)")
    args = parser.parse_args()
    asyncio.run(shoot(args.model, args.output, (args.width, args.height), args.tokens))


if __name__ == "__main__":
    main()
