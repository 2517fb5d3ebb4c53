"""The Textual TUI end to end: Pilot drives `BatonApp` on `random:tiny` with a real SQLite file.

Every test gets its own `BATON_CONFIG_DIR` (preferences with the live panel closed) and database; the engine
is the shared tiny model started per test (`make_engine`), so no test waits for a model load unless that is
what it tests. `real_model` runs the default SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import json
import threading

import pytest
from textual.command import CommandList, CommandPalette
from textual.widgets import DataTable, Input

from app.cli import main
from app.tui.messages import ModelLoaded
from app.tui.screens.confirm import ConfirmScreen
from app.tui.screens.help import HelpScreen
from app.tui.screens.search import SearchScreen
from app.tui.screens.settings import SettingsScreen
from app.tui.screens.text_prompt import TextPromptScreen
from app.tui import BatonApp
from app.tui.widgets.chat_list import ChatList
from app.tui.widgets.chat_view import ChatView
from app.tui.widgets.live_panel import LivePanel
from app.tui.widgets.prompt_input import PromptInput
from app.tui.widgets.status_line import StatusLine
from backend import DEFAULT_MODEL, Engine, EngineConfig
from conftest import queued, spy_prompts, until
from storage import Store
from themes import BATON_THEMES
from tui_text import screen_lines
from tui_support import (SIZE, cells_in_256_colours, choose_chat, config_dir, idle, new_chat, open_chat_id,  # noqa: F401
                         populate, ready, record_notifications, send, type_burst, wait_for)

# random:tiny makes ~1,000 tokens/s alone on a CPU: long answers keep chats streaming side by side for
# seconds. ignore_eos: always the full length. (Its context is 2,048 tokens.)
LONG = {"max_tokens": 1500, "ignore_eos": True, "temperature": 0.7}


@pytest.fixture
def engine(make_engine):
    return make_engine()


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "baton.db")
    yield store
    await store.close()


def status_text(screen) -> str:
    return str(screen.query_one(StatusLine).query_one("#status-text").render())


# ----------------------------------------------------------------------------------- focus
# Focus follows the user (issue #10.3): after choosing a chat in the list, or deleting the open one, what the
# user types goes into the prompt, not into the list.
async def test_choosing_a_chat_in_the_list_puts_the_cursor_in_the_prompt(engine, store):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        first = await new_chat(pilot)
        second = await new_chat(pilot)
        await pilot.press("ctrl+l")
        chat_list = screen.query_one(ChatList)
        assert app.focused is chat_list
        assert chat_list.chat_ids[:2] == [second, first] and chat_list.highlighted == 0  # newest first, open
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: open_chat_id(pilot) == first, what="the chosen chat to open")
        await wait_for(pilot, lambda: isinstance(app.focused, PromptInput), what="the prompt focused")
        await pilot.press(*"hi")
        assert screen.query_one(PromptInput).text == "hi"


async def test_deleting_the_open_chat_puts_the_cursor_in_the_prompt(engine, store):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        keep = await new_chat(pilot)
        doomed = await new_chat(pilot)
        await pilot.press("ctrl+l")
        await pilot.press("f8")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        await pilot.press("y")
        chat_list = screen.query_one(ChatList)
        await wait_for(pilot, lambda: doomed not in chat_list.chat_ids, what="the chat deleted")
        await wait_for(pilot, lambda: isinstance(app.focused, PromptInput), what="the prompt focused")
        await pilot.press(*"typed")
        assert screen.query_one(PromptInput).text == "typed"
        assert keep in chat_list.chat_ids


@pytest.mark.parametrize("size", [SIZE, (80, 24)])
async def test_a_new_chat_puts_the_cursor_in_the_prompt(engine, store, size):
    await populate(store)
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=size) as pilot:
        screen = await ready(pilot)
        await pilot.press("ctrl+l")
        assert app.focused is screen.query_one(ChatList)
        first = await new_chat(pilot)  # Ctrl+N from the chat list
        await wait_for(pilot, lambda: isinstance(app.focused, PromptInput), what="the prompt focused")
        await pilot.press(*"hi")
        assert screen.query_one(PromptInput).text == "hi" and open_chat_id(pilot) == first
        await pilot.press("ctrl+l", "down", "enter")  # an older chat, with messages: focus one of them
        await wait_for(pilot, lambda: open_chat_id(pilot) not in (None, first), what="the older chat")
        await wait_for(pilot, lambda: screen.query_one(ChatView).messages(), what="its messages")
        screen.query_one(ChatView).messages()[0].focus()
        await pilot.pause()
        second = await new_chat(pilot)
        await wait_for(pilot, lambda: isinstance(app.focused, PromptInput), what="the prompt focused")
        await pilot.press(*" there")
        assert screen.query_one(PromptInput).text == "hi there" and second != first


@pytest.mark.parametrize("size", [SIZE, (80, 24)])
async def test_next_and_previous_chat_keys_open_the_neighbouring_chats(engine, store, size):
    ids = await populate(store)
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=size) as pilot:
        screen = await ready(pilot)
        third = await new_chat(pilot)
        chat_list = screen.query_one(ChatList)
        await wait_for(pilot, lambda: chat_list.chat_ids == [third, ids["paris"], ids["rome"]], what="the list")

        async def step(*keys: str, to: int) -> None:
            await pilot.press(*keys)
            await wait_for(pilot, lambda: open_chat_id(pilot) == to, what=f"chat {to} open after {keys}")
            assert chat_list.chat_ids[chat_list.highlighted] == to
            await wait_for(pilot, lambda: isinstance(app.focused, PromptInput), what="the prompt focused")

        await step("alt+down", to=ids["paris"])
        await step("alt+down", to=ids["rome"])
        await step("alt+down", to=third)  # after the last, the first
        await step("alt+up", to=ids["rome"])  # before the first, the last
        await step("ctrl+l", "ctrl+pageup", to=ids["paris"])  # from the chat list too
        screen.query_one(ChatView).messages()[0].focus()  # from a message (its scroll view binds Ctrl+PgDn)
        await step("ctrl+pagedown", to=ids["rome"])
        type_burst(pilot, "\x1b[1;3A\x1b[1;3A")  # Alt+Up twice at once (as tmux sends it): the second steps on
        await wait_for(pilot, lambda: open_chat_id(pilot) == third, what="two chats up")
        # the second open has finished (list highlight and focus follow it) before the next key is read
        await wait_for(pilot, lambda: chat_list.chat_ids[chat_list.highlighted] == third, what="the highlight")
        await wait_for(pilot, lambda: isinstance(app.focused, PromptInput), what="the prompt focused")
        await pilot.pause()
        type_burst(pilot, "\x1b[6;5~")  # Ctrl+PgDn as tmux sends it
        await wait_for(pilot, lambda: open_chat_id(pilot) == ids["paris"], what="Ctrl+PgDn from the terminal")
        assert chat_list.chat_ids[chat_list.highlighted] == ids["paris"]


# ----------------------------------------------------------------------------------- typing
# Keys typed in one burst (a fast typist, a held Backspace, tmux) land in the order they were typed (issue #10.4:
# "second try." became "second tr"). Textual 8.2.8 runs a TextArea's bound keys (Backspace, arrows, Delete...)
# only once the key has bubbled up to the app, after the characters typed behind it were inserted
# (docs/upstream/textual-textarea-keys.md); the prompt runs them where it inserts characters.
@pytest.mark.parametrize("size", [SIZE, (80, 24)])
async def test_characters_typed_right_after_backspaces_are_kept_in_order(engine, store, size):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=size) as pilot:
        screen = await ready(pilot)
        prompt = screen.query_one(PromptInput)
        assert app.focused is prompt
        await pilot.press(*"second trxx")
        type_burst(pilot, "\x7f\x7fy.")  # Backspace, Backspace, y, .
        await wait_for(pilot, lambda: prompt.text == "second try.", what="'second try.'")
        type_burst(pilot, "\x1b[D\x1b[DX")  # Left, Left, X: typed before the "y"
        await wait_for(pilot, lambda: prompt.text == "second trXy.", what="'second trXy.'")


async def test_an_edit_typed_in_one_burst_is_sent_as_typed(engine, store):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot)
        chat_id = await new_chat(pilot)
        await store.update_chat_settings(chat_id, None, {"max_tokens": 4})
        await send(pilot, "Tell me three facts about Rome", press=True)
        await idle(pilot)
        screen.query_one(ChatView).messages()[0].focus()
        await pilot.press("e")
        prompt = screen.query_one(PromptInput)
        assert prompt.editing is not None and prompt.has_focus
        type_burst(pilot, "\x7f" * 4 + "Name\r")  # four Backspaces, "Name", Enter
        await wait_for(pilot, lambda: prompt.editing is None, what="the edit sent")
        await idle(pilot)
        user = (await store.list_messages(chat_id))[0]
        assert user.content == "Tell me three facts about Name"


@pytest.mark.parametrize("size", [SIZE, (80, 24)])
async def test_keys_typed_right_after_enter_stay_in_the_prompt(engine, store, size):
    """The prompt used to be cleared once the screen had accepted the message, after the keys typed behind the
    Enter had been inserted: they were lost."""
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=size) as pilot:
        screen = await ready(pilot)
        chat_id = await new_chat(pilot)
        await store.update_chat_settings(chat_id, None, {"max_tokens": 4})
        prompt = screen.query_one(PromptInput)
        await pilot.press(*"first")
        type_burst(pilot, "\rnext")  # Enter, then "next" at once
        view = screen.query_one(ChatView)
        await wait_for(pilot, lambda: [v.text for v in view.messages()][:1] == ["first"], what="the message sent")
        await idle(pilot)
        assert [(m.role, m.content) for m in await store.list_messages(chat_id)][0] == ("user", "first")
        assert prompt.text == "next"


async def test_a_message_the_chat_cannot_take_yet_stays_in_the_prompt(engine, store, decode_gate):
    app = BatonApp(engine=engine, store=store)
    notes = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        chat_id = await new_chat(pilot)
        await store.update_chat_settings(chat_id, None, {"max_tokens": 1900, "ignore_eos": True})
        gate = decode_gate(engine)  # the answer is held after its first token: the chat is answering
        await send(pilot, "a long one", press=True)
        await wait_for(pilot, lambda: chat_id in screen.sessions.busy_chats(), what="the answer")
        prompt = screen.query_one(PromptInput)
        await pilot.press(*"too soon", "enter")
        await wait_for(pilot, lambda: any(sev == "warning" for sev, _, _ in notes), what="the warning")
        await wait_for(pilot, lambda: not prompt.pending, what="the refusal")
        assert prompt.text == "too soon" and "still answering" in notes[-1][2]
        gate.release()
        await pilot.press("escape")
        await idle(pilot)


@pytest.mark.parametrize("size", [SIZE, (80, 24)])
async def test_up_and_down_in_the_prompt_recall_this_chats_messages(engine, store, size):
    ids = await populate(store)
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=size) as pilot:
        screen = await ready(pilot)
        prompt = screen.query_one(PromptInput)
        chat_id = await new_chat(pilot)
        await store.update_chat_settings(chat_id, None, {"max_tokens": 4})
        await pilot.press(*"first question", "enter")
        await idle(pilot)
        await pilot.press(*"line one", "ctrl+j", *"line two", "enter")
        await idle(pilot)
        assert prompt.text == "" and app.focused is prompt

        await pilot.press(*"draft", "ctrl+j", *"more")  # a two-line draft: Up first moves the cursor up
        await pilot.press("up")
        assert prompt.text == "draft\nmore" and prompt.cursor_location[0] == 0
        await pilot.press("up")  # on the first line: the last message sent, the cursor at its end
        assert prompt.text == "line one\nline two" and prompt.cursor_location == (1, 8) and prompt.recalled == 1
        await pilot.press("up")  # inside a recalled message the cursor moves
        assert prompt.text == "line one\nline two" and prompt.cursor_location[0] == 0
        await pilot.press("up")
        assert prompt.text == "first question" and prompt.recalled == 2
        await pilot.press("up")  # nothing older: the text stays
        assert prompt.text == "first question"
        await pilot.press("down")
        assert prompt.text == "line one\nline two" and prompt.recalled == 1
        await pilot.press("down")  # past the newest: the draft, as it was
        assert prompt.text == "draft\nmore" and prompt.recalled is None
        await pilot.press("down")
        assert prompt.text == "draft\nmore"

        await pilot.press(*["backspace"] * len(prompt.text))  # the cursor is at the end: delete the draft
        assert prompt.text == ""
        await pilot.press("up", "up", "up", "enter")  # back over both lines of the last one: resend the first
        await idle(pilot)
        assert [m.content for m in await store.list_messages(chat_id) if m.role == "user"] == [
            "first question", "line one\nline two", "first question"]
        await pilot.press("up")
        assert prompt.text == "first question"
        await pilot.press("down")
        assert prompt.text == ""

        await pilot.press("alt+down")  # another chat: its own messages
        await wait_for(pilot, lambda: open_chat_id(pilot) == ids["paris"], what="the Paris chat")
        await pilot.press("up")
        assert prompt.text == "What is the capital of France?"
        await pilot.press("up")
        assert prompt.text == "What is the capital of France?"


# ----------------------------------------------------------------------------------- streaming
async def test_two_chats_stream_at_the_same_time_and_both_answers_are_stored(engine, store, tmp_path, decode_gate):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        chat_list = screen.query_one(ChatList)
        a = await new_chat(pilot)
        await store.update_chat_settings(a, None, LONG)
        b = await new_chat(pilot)
        await store.update_chat_settings(b, None, LONG)
        gate = decode_gate(engine)  # B's answer waits at its first decode step until A's request is sent
        await send(pilot, "second question")  # in B, which is open
        await gate.parked()
        await choose_chat(pilot, a)
        await send(pilot, "first question")
        await queued(engine)
        gate.release()

        def both_in_one_batch():
            live = [screen.sessions.live(a), screen.sessions.live(b)]
            rows = {row.request_id for row in engine.stats().rows}
            return (chat_list.is_marked(a) and chat_list.is_marked(b) and all(live)
                    and {g.request_id for g in live} <= rows)

        await wait_for(pilot, both_in_one_batch, what="both chats answering in the same batch")
        await idle(pilot)
        assert not chat_list.is_marked(a) and not chat_list.is_marked(b)
        assert {a, b} <= set(chat_list.chat_ids)

    async with await Store.open(tmp_path / "baton.db") as check:
        for chat_id, question in ((a, "first question"), (b, "second question")):
            user, answer = await check.list_messages(chat_id)
            assert (user.role, user.content) == ("user", question)
            assert answer.role == "assistant" and answer.content
            assert answer.finish_reason == "length" and answer.completion_tokens == LONG["max_tokens"]
            assert answer.prompt_tokens > 0 and answer.ttft_ms > 0 and answer.tokens_per_s > 0
            assert answer.model == "random:tiny"
        assert (await check.get_chat(a)).title == "first question"  # a fresh chat is named after its first message


async def test_a_hidden_chat_keeps_streaming_and_shows_its_text_when_opened_again(engine, store, decode_gate):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        view = screen.query_one(ChatView)
        a = await new_chat(pilot)
        await store.update_chat_settings(a, None, {**LONG, "max_tokens": 1900})
        await send(pilot, "a long answer please")
        await wait_for(pilot, lambda: len(screen.sessions.live(a).parts) > 5, what="A streaming")
        b = await new_chat(pilot, press=False)  # A is no longer shown...
        shown_at = len(screen.sessions.live(a).parts)
        await wait_for(pilot, lambda: len(screen.sessions.live(a).parts) > shown_at + 20, what="A streaming on")
        gate = decode_gate(engine)  # A's answer is surely unfinished while it is opened again
        await gate.parked()
        await choose_chat(pilot, a)  # ...and opened again while it streams
        await wait_for(pilot, lambda: view.answer is not None, what="A's answer shown")
        live = screen.sessions.live(a)
        assert live is not None and view.answer.text and live.text.startswith(view.answer.text)
        gate.release()
        await idle(pilot)
        stored = (await store.list_messages(a))[-1]
        assert view.chat_id == a and view.messages()[-1].text == stored.content
        assert stored.completion_tokens == 1900 and b != a


async def test_escape_stops_the_answer_and_keeps_the_partial_text(engine, store):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        chat_id = await new_chat(pilot)
        await store.update_chat_settings(chat_id, None, {"max_tokens": 1900, "ignore_eos": True})
        await send(pilot, "never stop talking")
        await wait_for(pilot, lambda: (g := screen.sessions.live(chat_id)) and g.message_id and len(g.text) > 20,
                       what="some streamed text")
        await pilot.press("escape")
        await idle(pilot)
        shown = screen.query_one(ChatView).messages()[-1]
        answer = (await store.list_messages(chat_id))[-1]
        assert answer.finish_reason == "cancelled"
        assert answer.content and answer.content == shown.text
        assert 0 < answer.completion_tokens < 1900
        assert "stopped" in str(shown.query_one(".message-stats").render())


async def test_quitting_mid_answer_stores_the_partial_answer_as_interrupted(engine, store):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        chat_id = await new_chat(pilot)
        await store.update_chat_settings(chat_id, None, {"max_tokens": 1900, "ignore_eos": True})
        await send(pilot, "keep going")
        await wait_for(pilot, lambda: (g := screen.sessions.live(chat_id)) and g.message_id and len(g.text) > 20,
                       what="some streamed text")
    answer = (await store.list_messages(chat_id))[-1]  # the app has closed
    assert answer.finish_reason == "interrupted" and answer.content and 0 < answer.completion_tokens < 1900
    await until(lambda: not engine.stats().rows, what="the engine to let go of the row")


def answer_note(view: ChatView) -> str:
    """The stats line of the answer streaming in the view ("" when there is none)."""
    answer = view.answer
    return "" if answer is None else str(answer.query_one(".message-stats").render())


# Issue #10.5: Esc and Ctrl+Q showed nothing for seconds. The engine is parked inside a decode step (DecodeGate),
# so "at once" means: before the engine has moved at all.
async def test_escape_says_stopping_at_once_and_the_answer_ends_within_one_engine_step(engine, store, decode_gate):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot)
        view = screen.query_one(ChatView)
        other = await new_chat(pilot)
        await store.update_chat_settings(other, None, LONG)
        first = decode_gate(engine, lambda batch: batch.size == 1, skip=2)
        await send(pilot, "keep talking", press=True)
        await first.parked()  # the first chat streams no further until the second is in the engine's inbox
        chat_id = await new_chat(pilot)
        await store.update_chat_settings(chat_id, None, LONG)
        both = decode_gate(engine, lambda batch: batch.size == 2, skip=10)
        await send(pilot, "you too", press=True)
        await queued(engine)
        first.release()
        await both.parked()  # both chats' rows are in a decode step, with some text each
        await wait_for(pilot, lambda: (g := screen.sessions.live(chat_id)) and g.message_id and view.answer,
                       what="the answer's first token stored and shown")
        await pilot.press("escape")
        await wait_for(pilot, lambda: answer_note(view) == "stopping…", what="'stopping…' while the engine is parked")
        await queued(engine)  # the cancel waits in the engine's inbox
        alone = decode_gate(engine, lambda batch: batch.size == 1)  # the next decode step: the other chat alone
        both.release()
        await alone.parked()
        await wait_for(pilot, lambda: "stopped" in str(view.messages()[-1].query_one(".message-stats").render()),
                       what="the stopped answer to end before the engine's next step")
        assert chat_id not in screen.sessions.busy_chats() and other in screen.sessions.busy_chats()
        alone.release()
    answer = (await store.list_messages(chat_id))[-1]
    assert answer.finish_reason == "cancelled" and answer.content


async def test_ctrl_q_says_closing_at_once_and_does_not_wait_for_the_engine(tiny, store, decode_gate):
    engine = Engine(EngineConfig(model=tiny.name), loaded=tiny)  # the app's own: it starts and stops it
    app = BatonApp(engine=engine, store=store)
    notes = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot)
        chat_id = await new_chat(pilot)
        await store.update_chat_settings(chat_id, None, LONG)
        gate = decode_gate(engine, lambda batch: batch.size == 1, skip=10)
        await send(pilot, "keep going", press=True)
        await gate.parked()  # the engine is inside a step, and stays there until released
        gen = screen.sessions.live(chat_id)  # every token made before the engine parked has been taken:
        await wait_for(pilot, lambda: gen.recorder and gen.recorder.stats.completion_tokens == 11, what="11 tokens")
        text = gen.text
        app.simulate_key("ctrl+q")  # the key as the terminal sends it (Pilot's press would wait on a closing app)
        await until(lambda: not app.is_running, what="the app to close by itself")
    # the app has closed while the engine was still parked in its step: quitting did not wait for it
    assert ("information", "Closing…", "answers in flight are saved") in notes
    assert not engine.started
    answer = (await store.list_messages(chat_id))[-1]
    assert answer.finish_reason == "interrupted" and answer.content == text and answer.completion_tokens == 11
    gate.release()
    await until(lambda: not engine.stats().rows, what="the engine thread to end the row after its step")


def label_of(view) -> str:
    return str(view.query_one(".message-label").render())


async def test_regenerate_keeps_the_old_answer_and_the_bracket_keys_page_through_them(engine, store):
    """Ctrl+R answers again beside the old answer ("answer 2/2"); `[` / `]` (or Left / Right) on the focused answer
    page between them, the chat shows one branch at a time, and the next turn's prompt follows the one shown."""
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        chat_id = await new_chat(pilot)
        await store.update_chat_settings(chat_id, None, {"max_tokens": 8, "temperature": 1.0})
        await send(pilot, "hello", press=True)
        await idle(pilot)
        user, first = await store.list_messages(chat_id)
        view = screen.query_one(ChatView)
        old = view.messages()[-1]
        assert old.position is None and "answer" not in label_of(old)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: view.messages()[-1] is not old and view.messages()[-1].message_id,
                       what="a new answer")
        await idle(pilot)
        messages = await store.list_messages(chat_id)
        assert [x.id for x in messages[:2]] == [user.id, first.id] and len(messages) == 3  # nothing deleted
        second = messages[2]
        assert second.parent_id == user.id and second.finish_reason in ("stop", "length")
        assert [v.message_id for v in view.messages()] == [user.id, second.id]
        assert view.messages()[-1].position == (2, 2) and "answer 2/2" in label_of(view.messages()[-1])

        view.messages()[-1].focus()
        await pilot.press("left_square_bracket")
        await wait_for(pilot, lambda: [v.message_id for v in view.messages()] == [user.id, first.id],
                       what="the first answer shown")
        shown = view.messages()[-1]
        assert shown.text == first.content and shown.position == (1, 2) and "answer 1/2" in label_of(shown)
        assert app.focused is shown  # the cursor stays on the answer: the keys page on
        await pilot.press("left_square_bracket")  # the first stays the first
        await pilot.press("right")
        await wait_for(pilot, lambda: [v.message_id for v in view.messages()] == [user.id, second.id],
                       what="the second answer shown again")
        await pilot.press("left")
        await wait_for(pilot, lambda: view.messages()[-1].message_id == first.id, what="the first answer again")

        prompts = spy_prompts(engine)
        await send(pilot, "and then?", press=True)
        await idle(pilot)
        assert prompts == [[{"role": "user", "content": "hello"}, {"role": "assistant", "content": first.content},
                            {"role": "user", "content": "and then?"}]]
        follow_up = (await store.list_messages(chat_id))[3]
        assert follow_up.content == "and then?" and follow_up.parent_id == first.id
        assert [v.message_id for v in view.messages()][:3] == [user.id, first.id, follow_up.id]

    app = BatonApp(engine=engine, store=store)  # a restart shows the branch that was shown
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        view = screen.query_one(ChatView)
        assert [v.message_id for v in view.messages()][:3] == [user.id, first.id, follow_up.id]
        assert view.messages()[1].position == (1, 2)


async def test_edit_and_resend_replaces_the_message_and_what_followed(engine, store):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        chat_id = await new_chat(pilot)
        await store.update_chat_settings(chat_id, None, {"max_tokens": 8})
        await send(pilot, "first version", press=True)
        await idle(pilot)
        old_user, old_answer = await store.list_messages(chat_id)
        screen.query_one(ChatView).messages()[0].focus()
        await pilot.press("e")
        prompt = screen.query_one(PromptInput)
        assert prompt.editing == old_user.id and prompt.text == "first version" and prompt.has_focus
        prompt.load_text("second version")
        await pilot.press("enter")
        view = screen.query_one(ChatView)
        await wait_for(pilot, lambda: [v.text for v in view.messages()][:1] == ["second version"]
                       and len(view.messages()) == 2 and view.messages()[-1].message_id, what="the resent turn")
        await idle(pilot)
        user, answer = await store.list_messages(chat_id)
        assert user.content == "second version" and user.created_at > old_answer.created_at
        assert answer.finish_reason in ("stop", "length") and prompt.editing is None
        assert [v.message_id for v in view.messages()] == [user.id, answer.id]


# --------------------------------------------------------------------------------- chat list
async def test_rename_and_delete_with_confirmation(engine, store):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        keep = await new_chat(pilot)
        chat_id = await new_chat(pilot)
        await pilot.press("f2")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, TextPromptScreen) and app.screen)
        dialog.query_one(Input).value = "Trip to Rome"
        await pilot.press("enter")
        view = screen.query_one(ChatView)
        await wait_for(pilot, lambda: view.chat.title == "Trip to Rome", what="the new title")
        assert (await store.get_chat(chat_id)).title == "Trip to Rome"

        await pilot.press("f8")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("escape")  # cancelled: nothing happens
        await wait_for(pilot, lambda: app.screen is screen)
        assert await store.get_chat(chat_id) is not None

        await pilot.press("f8")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.click("#confirm")
        chat_list = screen.query_one(ChatList)
        await wait_for(pilot, lambda: chat_id not in chat_list.chat_ids and view.chat_id == keep,
                       what="the chat gone from the list")
        assert await store.get_chat(chat_id) is None and await store.get_chat(keep) is not None


async def test_deleting_a_chat_while_it_answers_stops_it_quietly(engine, store, decode_gate):
    app = BatonApp(engine=engine, store=store)
    notes = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        keep = await new_chat(pilot)
        chat_id = await new_chat(pilot)
        await store.update_chat_settings(chat_id, None, {"max_tokens": 1900, "ignore_eos": True})
        gate = decode_gate(engine)  # the answer is held after its first token until the delete is confirmed
        await send(pilot, "a long one")
        await wait_for(pilot, lambda: (g := screen.sessions.live(chat_id)) and g.message_id, what="the answer")
        screen.action_delete_chat()
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen.query("#confirm"))
        app.screen.action_confirm()
        gate.release()
        await idle(pilot)
        await wait_for(pilot, lambda: screen.query_one(ChatView).chat_id == keep, what="another chat shown")
        assert await store.get_chat(chat_id) is None and not engine.stats().rows
        assert engine.stats().counters["num_requests_cancelled"] == 1  # stopped, not run to its end
    assert not [n for n in notes if n[0] == "error"]


async def test_archive_hides_a_chat_until_archived_chats_are_shown(engine, store):
    ids = await populate(store)
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        chat_list = screen.query_one(ChatList)
        await wait_for(pilot, lambda: screen.query_one(ChatView).chat_id == ids["paris"])  # newest first
        assert chat_list.chat_ids == [ids["paris"], ids["rome"]]
        await pilot.press("f4")
        await wait_for(pilot, lambda: chat_list.chat_ids == [ids["rome"]], what="the archived chat hidden")
        assert (await store.get_chat(ids["paris"])).archived
        await pilot.press("f5")
        await wait_for(pilot, lambda: len(chat_list.chat_ids) == 2, what="archived chats listed")
        assert "(archived)" in str(chat_list.get_option(str(ids["paris"])).prompt)


async def test_search_finds_a_message_and_opens_its_chat(engine, store):
    ids = await populate(store)
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        view = screen.query_one(ChatView)
        await wait_for(pilot, lambda: view.chat_id == ids["paris"])
        await pilot.press("ctrl+f")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, SearchScreen) and app.screen)
        await pilot.press(*"colosseum")
        await wait_for(pilot, lambda: dialog._hits, what="search results")
        assert [hit.chat.id for hit in dialog._hits] == [ids["rome"]]
        await pilot.press("enter")
        await wait_for(pilot, lambda: view.chat_id == ids["rome"], what="the hit's chat opened")
        assert "Colosseum" in view.messages()[-1].text


async def test_a_search_hit_in_an_answer_that_is_not_shown_opens_its_branch(engine, store):
    ids = await populate(store)
    rome = await store.branch(ids["rome"])
    question = rome.messages[0]
    other = await store.start_assistant_message(ids["rome"], question.id, "random:tiny")
    await store.finish_message(other.id, "Skip Rome: try Lisbon.", "stop", 14, 5, 30.0, 50.0)
    await store.show_message(rome.messages[-1].id)  # the Colosseum answer is shown; Lisbon is answer 2/2
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        view = screen.query_one(ChatView)
        await pilot.press("ctrl+f")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, SearchScreen) and app.screen)
        await pilot.press(*"lisbon")
        await wait_for(pilot, lambda: dialog._hits, what="search results")
        await pilot.press("enter")
        await wait_for(pilot, lambda: view.chat_id == ids["rome"] and view.messages()[-1].message_id == other.id,
                       what="the hit's answer shown")
        assert view.messages()[-1].position == (2, 2)


# ---------------------------------------------------------------------- settings, export, copy
async def test_settings_are_validated_inline_and_stored_with_the_chat(engine, store):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        chat_id = await new_chat(pilot)
        await pilot.press("f3")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen) and app.screen)
        error = dialog.query_one("#settings-error")
        dialog.query_one("#temperature", Input).value = "warm"
        await pilot.click("#save")
        assert "temperature: must be a number" in str(error.render()) and app.screen is dialog
        assert dialog.query_one("#temperature", Input).has_focus  # the bad field
        dialog.query_one("#temperature", Input).value = "-1"
        await pilot.press("enter")  # Enter in a field saves too
        assert "temperature: must be >= 0" in str(error.render()) and app.screen is dialog
        dialog.query_one("#temperature", Input).value = "0.2"
        dialog.query_one("#top_p", Input).value = "0.9"
        dialog.query_one("#max_tokens", Input).value = "64"
        dialog.query_one("#seed", Input).value = "7"
        dialog.query_one("#system_prompt").load_text("You are terse.")
        save = dialog.query_one("#save")
        await wait_for(pilot, lambda: not save.has_class("-active"), what="the button's press effect to end")
        await pilot.click("#save")  # (a button ignores clicks while it shows the previous press)
        await wait_for(pilot, lambda: app.screen is not dialog)
        await wait_for(pilot, lambda: app.chat_screen.query_one(ChatView).chat.params.get("seed") == 7)
        chat = await store.get_chat(chat_id)
        assert chat.system_prompt == "You are terse."
        assert chat.params == {"temperature": 0.2, "top_p": 0.9, "max_tokens": 64, "seed": 7}


async def test_export_writes_markdown_and_json(engine, store, tmp_path):
    ids = await populate(store)
    app = BatonApp(engine=engine, store=store)
    notes = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await wait_for(pilot, lambda: screen.query_one(ChatView).chat_id == ids["paris"])
        await pilot.press("ctrl+s")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, TextPromptScreen) and app.screen)
        assert dialog.query_one(Input).value.endswith(f"baton-chat-{ids['paris']}-capital-of-france")
        dialog.query_one(Input).value = str(tmp_path / "out" / "paris.md")
        await pilot.press("enter")
        await wait_for(pilot, lambda: (tmp_path / "out" / "paris.json").exists(), what="the export")
    markdown = (tmp_path / "out" / "paris.md").read_text(encoding="utf-8")
    data = json.loads((tmp_path / "out" / "paris.json").read_text(encoding="utf-8"))
    assert "What is the capital of France?" in markdown and "Paris." in markdown
    assert [m["content"] for m in data["messages"]] == ["What is the capital of France?", "Paris."]
    assert any(title == "Chat exported" and "paris.md" in text for _, title, text in notes)


async def test_copy_a_message_or_its_first_code_block(engine, store):
    ids = await populate(store)
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        view = screen.query_one(ChatView)
        await wait_for(pilot, lambda: view.chat_id == ids["paris"], what="the newest chat open")
        chat_list = screen.query_one(ChatList)
        chat_list.focus()
        await wait_for(pilot, lambda: chat_list.has_focus and chat_list.chat_ids == [ids["paris"], ids["rome"]]
                       and chat_list.highlighted == 0, what="the chat list loaded and focused")
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: view.chat_id == ids["rome"] and view.messages(), what="the Rome chat open")
        answer = view.messages()[-1]
        answer.focus()
        await pilot.press("y")
        await wait_for(pilot, lambda: app.clipboard == "print('ciao')\n", what="the code block copied")
        await pilot.press("c")
        await wait_for(pilot, lambda: app.clipboard == answer.text, what="the message copied")
        assert answer.text.startswith("Day 1")
        app.copy_to_clipboard("")
        await screen.run_action("copy_last_code")  # the palette's "Copy code from last answer"
        assert app.clipboard == "print('ciao')\n"


# ------------------------------------------------------------------------------- live panel
async def test_live_panel_shows_the_batch_rows_while_generating(engine, store, config_dir, decode_gate):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = await ready(pilot)
        chat_id = await new_chat(pilot)
        await store.update_chat_settings(chat_id, None, LONG)
        await pilot.press("ctrl+b")
        panel = await wait_for(pilot, lambda: screen.query(LivePanel).first() if screen.query(LivePanel) else None)
        table = panel.query_one("#rows", DataTable)
        gate = decode_gate(engine, skip=1)  # held at the second decode step: the row is in the published stats
        await send(pilot, "count to a thousand")
        await gate.parked()
        await wait_for(pilot, lambda: table.row_count > 0, what="a batch row in the panel")
        label = str(table.get_row_at(0)[0])
        assert label.startswith("chat: count to")  # described by the chat's title
        gate.release()
        assert json.loads((config_dir / "preferences.json").read_text())["show_panel"] is True
        await idle(pilot)
        await pilot.press("ctrl+b")
        await wait_for(pilot, lambda: not screen.query(LivePanel))
        assert json.loads((config_dir / "preferences.json").read_text())["show_panel"] is False


# ------------------------------------------------------------------------------------ themes
async def test_theme_choice_is_remembered_between_runs(engine, store, config_dir):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.theme == "baton-dark"
        app.theme = "nord"  # what the palette's "Theme" does
        await pilot.pause()
    assert json.loads((config_dir / "preferences.json").read_text())["theme"] == "nord"

    again = BatonApp(engine=engine, store=store)
    async with again.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert again.theme == "nord"

    once = BatonApp(engine=engine, store=store, theme="dracula")  # --theme: this run only
    async with once.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert once.theme == "dracula"
    assert json.loads((config_dir / "preferences.json").read_text())["theme"] == "nord"


@pytest.mark.parametrize("size", [SIZE, (80, 24)])
async def test_the_focused_message_stands_out_in_256_colours_in_every_theme(engine, store, size):
    """A faint tint fell on the same palette entry as the background in 256 colours (baton-dark, baton-ember):
    only 3 cells of a message changed when it was focused (issue #10.3)."""
    ids = await populate(store)
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=size) as pilot:
        screen = await ready(pilot)
        await pilot.press("alt+down")  # the Rome chat: a question and a long answer
        await wait_for(pilot, lambda: open_chat_id(pilot) == ids["rome"] and
                       len(screen.query_one(ChatView).messages()) == 2, what="the Rome chat")
        prompt = screen.query_one(PromptInput)
        for theme in BATON_THEMES:
            app.theme = theme.name
            for back, role in ((1, "assistant"), (2, "user")):
                prompt.focus()
                await pilot.pause()
                view = screen.query_one(ChatView).messages()[-back]
                assert view.role == role
                before = cells_in_256_colours(app, view.region)
                await pilot.press(*["shift+tab"] * back)  # from the prompt back to the message
                assert app.focused is view
                await pilot.pause()
                after = cells_in_256_colours(app, view.region)
                changed = [cell for cell in before if before[cell] != after.get(cell)]
                assert len(changed) >= 0.9 * len(before), (theme.name, role, len(changed), len(before))
                label = view.query_one(".message-label").region
                assert all(after[x, label.y][3] for x in range(label.x, label.x + 3)), (  # "You", "Assistant"
                    theme.name, role, "label not in reverse video")


async def test_unreadable_preferences_are_a_warning_and_defaults(engine, store, config_dir):
    (config_dir / "preferences.json").write_text("{not json", encoding="utf-8")
    app = BatonApp(engine=engine, store=store)
    notes = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.theme == "baton-dark"
    assert any(sev == "warning" and title == "Preferences" for sev, title, _ in notes)


# ------------------------------------------------------------------------- model and startup
async def test_messages_sent_while_the_model_loads_wait_and_are_answered(store, monkeypatch):
    import app.tui.screens.chat as chat_module

    loading = threading.Event()  # the model load is held until the message has been sent

    def held_load(*args):
        loading.wait(60)
        return load_engine(*args)

    load_engine = chat_module.load_engine
    monkeypatch.setattr(chat_module, "load_engine", held_load)
    app = BatonApp(config=EngineConfig(model="random:tiny", device="cpu"), store=store)
    status_before_load = []

    def hook(message):
        if isinstance(message, ModelLoaded) and not status_before_load:
            status_before_load.append(status_text(app.chat_screen))

    async with app.run_test(size=SIZE, message_hook=hook) as pilot:
        await wait_for(pilot, lambda: app.chat_screen is not None and app.chat_screen.is_mounted)
        screen = app.chat_screen
        chat_id = await new_chat(pilot)
        await store.update_chat_settings(chat_id, None, {"max_tokens": 8})
        await send(pilot, "are you there?")
        assert screen.sessions.engine is None and app.engine is None  # made once the model loads, off the UI

        def note() -> str:
            answer = screen.query_one(ChatView).answer
            return str(answer.query_one(".message-stats").render()) if answer is not None else ""

        await wait_for(pilot, lambda: "waiting for the model" in note(), what="the queued answer's note")
        loading.set()
        await wait_for(pilot, lambda: screen.sessions.engine is not None, what="the model")
        await idle(pilot)
        assert status_before_load[0].startswith("Loading random:tiny…")
        assert status_text(screen) == "random:tiny · cpu"
        user, answer = await store.list_messages(chat_id)
        assert user.content == "are you there?" and answer.finish_reason in ("stop", "length")
    assert not app.engine.started  # the app shut down the engine it started


async def test_a_model_that_fails_to_load_is_reported_and_messages_are_kept(store):
    app = BatonApp(config=EngineConfig(model="random:no-such-preset", device="cpu"), store=store)
    notes = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.chat_screen is not None and app.chat_screen.is_mounted)
        screen = app.chat_screen
        await wait_for(pilot, lambda: "failed" in status_text(screen), what="the failure in the status line")
        assert "Model failed to load" in status_text(screen) and "no-such-preset" in status_text(screen)
        assert any(sev == "error" and title == "Model failed to load" for sev, title, _ in notes)
        chat_id = await new_chat(pilot)
        await send(pilot, "still there?", press=True)
        view = screen.query_one(ChatView)
        await wait_for(pilot, lambda: len(view.messages()) == 2 and not screen.sessions.busy_chats())
        assert "failed: the model is not loaded" in str(view.messages()[-1].query_one(".message-stats").render())
    assert [m.content for m in await store.list_messages(chat_id)] == ["still there?"]  # kept, never lost


def test_an_unusable_database_is_one_error_line_and_exit_2(tmp_path, capsys):
    db = tmp_path / "history.db"
    db.write_bytes(b"this is not a database\n" * 10)
    assert main(["--db", str(db), "--model", "random:tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"baton: error: {db}") and "not an SQLite database" in err[0]
    assert db.read_bytes() == b"this is not a database\n" * 10


async def test_help_screen_lists_the_keys(engine, store):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("f1")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen) and app.screen)
        keys = {keys for keys, _ in dialog.rows()}
        for key in ("Ctrl+N", "Esc", "Ctrl+R", "Ctrl+F", "Ctrl+B", "F2", "F3", "F4", "F5", "F8", "Ctrl+S",
                    "Shift+Enter / Ctrl+J", "F1 / ?", "Alt+Down / Ctrl+PgDn", "Alt+Up / Ctrl+PgUp"):
            assert key in keys, key
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))


async def test_command_palette_runs_the_chat_actions(engine, store):
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        first = await new_chat(pilot)
        await pilot.press("ctrl+p")
        palette = await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette) and app.screen)
        await pilot.press(*"new chat")
        results = palette.query_one(CommandList)

        def new_chat_highlighted() -> bool:
            index = results.highlighted
            return index is not None and "New chat" in str(results.get_option_at_index(index).prompt)

        await wait_for(pilot, new_chat_highlighted, what="'New chat' found by the palette")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.query_one(ChatView).chat_id not in (None, first), what="a new chat")


async def test_regenerate_in_an_empty_chat_is_a_notification(engine, store):
    app = BatonApp(engine=engine, store=store)
    notes = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await new_chat(pilot)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: any(sev == "error" for sev, _, _ in notes), what="the notification")
        assert "nothing to regenerate" in [text for sev, _, text in notes if sev == "error"][0]
        assert not screen.query_one(ChatView).messages() and not screen.sessions.busy_chats()


# --------------------------------------------------------------------------------- real model
@pytest.mark.real_model
async def test_real_model_answers_the_capital_of_france(real, store):
    engine = Engine(EngineConfig(model=DEFAULT_MODEL, device="cpu"), loaded=real).start()
    try:
        app = BatonApp(engine=engine, store=store)
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            chat_id = await new_chat(pilot)
            await store.update_chat_settings(chat_id, None, {"temperature": 0, "max_tokens": 48})
            await send(pilot, "What is the capital of France?")
            await idle(pilot, timeout=120)
        answer = (await store.list_messages(chat_id))[-1]
        assert answer.finish_reason in ("stop", "length") and "Paris" in answer.content
    finally:
        engine.shutdown()



async def test_typing_with_no_chat_open_starts_a_chat_and_answers(engine, store):
    """A first-time user types a question into the empty screen and presses Enter: a chat is made for it."""
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert await store.list_chats() == []
        await send(pilot, "hello there")
        await wait_for(pilot, lambda: open_chat_id(pilot) is not None, what="the new chat opened")
        chat_id = open_chat_id(pilot)

        async def answered():
            msgs = await store.list_messages(chat_id)
            return len(msgs) >= 2 and msgs[-1].finish_reason is not None

        for _ in range(2400):  # a bound for a stuck engine (120 s), not a speed requirement
            if await answered():
                break
            await pilot.pause(0.05)
        msgs = await store.list_messages(chat_id)
        assert [m.role for m in msgs] == ["user", "assistant"] and msgs[0].content == "hello there"
        assert msgs[-1].finish_reason in ("stop", "length")


# A chat longer than the model's context is still answered; the answer's stats line says how many earlier
# messages the model did not see, in full at 80x24, and so does the chat opened again from the store.
async def test_an_answer_that_left_out_old_turns_says_so_under_it_at_80x24(make_engine, store, decode_gate):
    engine = make_engine(max_model_len=512)
    chat = await store.create_chat("Long talk", None, {"max_tokens": 16, "ignore_eos": True})
    for turn in range(6):  # ~100 tokens a turn: more than the 512-token context in all
        await store.add_message(chat.id, "user", f"Turn {turn}: " + "tell me about otters and kelp " * 2)
        await store.add_message(chat.id, "assistant", f"Answer {turn}: " + "otters float in the kelp " * 2)
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot)
        view = screen.query_one(ChatView)
        await choose_chat(pilot, chat.id)
        gate = decode_gate(engine)  # the answer waits at its first decode step: the note shows while it streams
        await send(pilot, "and one more thing?", press=True)
        await gate.parked()
        streaming_note = lambda: "generating… · " in answer_note(view) and "earlier messages left out" in answer_note(view)  # noqa: E731
        await wait_for(pilot, streaming_note, what="the note while the answer streams")
        await new_chat(pilot)
        await choose_chat(pilot, chat.id)  # opened again mid-answer: the live answer keeps its note
        await wait_for(pilot, streaming_note, what="the note in the chat opened again while it streams")
        gate.release()
        await idle(pilot)
        answer = (await store.list_messages(chat.id))[-1]
        assert answer.finish_reason == "length" and answer.completion_tokens == 16 and answer.dropped_messages > 0
        note = f"{answer.dropped_messages} earlier messages left out"
        stats = view.messages()[-1].query_one(".message-stats")
        assert note in str(stats.render())
        await wait_for(pilot, lambda: note in chat_text(app), what="the note on the 80x24 screen")
        await new_chat(pilot)
        await choose_chat(pilot, chat.id)  # opened again: read from the store
        await wait_for(pilot, lambda: note in chat_text(app), what="the note in the reopened chat")


def chat_text(app) -> str:
    """The words the chat pane shows on screen, in reading order (lines wrapped by the view joined again)."""
    lines = [line.split("▌", 1)[1] for line in screen_lines(app) if "▌" in line]
    return " ".join(" ".join(lines).split())


# ----------------------------------------------------------------------------------- the collector
async def test_start_up_objects_leave_the_collectors_scans_once_the_model_is_loaded(engine, store):
    """Full garbage collections while a chat streamed were its longest gaps (200-360 ms each): once the model is
    loaded the app freezes what it holds (`backend/process_gc.py`), and hands it back when it closes."""
    import gc

    gc.unfreeze()
    app = BatonApp(engine=engine, store=store)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert gc.get_freeze_count() > 10_000  # Textual's, the app's and the engine's objects
    assert gc.get_freeze_count() == 0
