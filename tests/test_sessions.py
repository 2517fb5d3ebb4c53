"""The TUI's non-widget parts: the `Sessions` controller (no Textual app: a plain asyncio launcher and a list
as the message sink), chat settings parsing, and the small formatting helpers."""

from __future__ import annotations

import asyncio

import pytest

from app.tui import messages as m
from app.chat.settings import ChatSettings, parse_settings
from app.tui.screens.help import key_label
from app.tui.sessions import DEFAULT_TITLE, BusyError, Sessions
from app.chat.prompt import build_prompt
from app.tui.widgets.message_view import first_code_block, message_stats
from storage import AFTER_SHOWN, Store
from conftest import spy_prompts, until


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "baton.db")
    yield store
    await store.close()


def controller(store, engine=None):
    """Sessions whose turns are plain tasks; returns (sessions, posted messages, tasks)."""
    posted, tasks = [], []
    sessions = Sessions(store, post=posted.append, launch=lambda coro, name: tasks.append(asyncio.create_task(coro)))
    if engine is not None:
        sessions.attach_engine(engine)
    return sessions, posted, tasks


async def finish(tasks) -> None:
    while tasks:
        await tasks.pop(0)


async def test_a_turn_stores_the_user_message_first_then_the_answer_with_its_stats(make_engine, store):
    sessions, posted, tasks = controller(store, make_engine())
    chat = await store.create_chat(DEFAULT_TITLE, None, {"max_tokens": 40, "ignore_eos": True})
    sessions.send(chat, "hello there")
    with pytest.raises(BusyError):
        sessions.send(chat, "again")  # one turn per chat at a time
    await finish(tasks)
    kinds = [type(x).__name__ for x in posted]
    assert kinds[:2] == ["UserMessageStored", "ChatChanged"]  # stored before the engine saw it; auto-title
    assert kinds.index("GenerationStarted") < kinds.index("TokensStreamed") and kinds[-1] == "GenerationFinished"
    streamed = "".join(x.text for x in posted if isinstance(x, m.TokensStreamed))
    user, answer = await store.list_messages(chat.id)
    assert user.content == "hello there" and (await store.get_chat(chat.id)).title == "hello there"
    assert answer.content == streamed and answer.finish_reason == "length" and answer.completion_tokens == 40
    assert answer.ttft_ms > 0 and answer.tokens_per_s > 0 and answer.prompt_tokens > 0
    assert posted[-1].message.id == answer.id and not sessions.busy_chats()
    # tokens are gathered: far fewer messages than tokens
    assert 1 <= kinds.count("TokensStreamed") < 40


async def test_turns_sent_before_the_model_wait_and_start_when_it_comes(make_engine, store):
    sessions, posted, tasks = controller(store)
    chats = [await store.create_chat(f"chat {i}", None, {"max_tokens": 5}) for i in range(2)]
    for chat in chats:
        sessions.send(chat, "early")
    await finish(tasks)
    assert [type(x) for x in posted].count(m.GenerationQueued) == 2
    assert sessions.busy_chats() == {c.id for c in chats} and sessions.live(chats[0].id).state == "queued"
    sessions.attach_engine(make_engine())
    await finish(tasks)
    for chat in chats:
        assert [x.role for x in await store.list_messages(chat.id)] == ["user", "assistant"]
    assert not sessions.busy_chats()


async def test_a_model_that_never_comes_fails_the_waiting_turns(store):
    sessions, posted, tasks = controller(store)
    chat = await store.create_chat("c", None, {})
    sessions.send(chat, "early")
    await finish(tasks)
    sessions.model_failed("no such model")
    assert isinstance(posted[-1], m.GenerationFailed) and "no such model" in posted[-1].error
    assert not sessions.busy_chats() and [x.content for x in await store.list_messages(chat.id)] == ["early"]


async def test_stop_keeps_the_partial_answer_as_cancelled(make_engine, store):
    sessions, posted, tasks = controller(store, make_engine())
    chat = await store.create_chat("c", None, {"max_tokens": 1900, "ignore_eos": True})
    sessions.send(chat, "go on")
    await until(lambda: (live := sessions.live(chat.id)) and len(live.parts) >= 10)
    assert sessions.stop(chat.id) and not sessions.stop(chat.id + 99)
    await finish(tasks)
    answer = (await store.list_messages(chat.id))[-1]
    assert answer.finish_reason == "cancelled" and answer.content and answer.completion_tokens < 1900
    assert posted[-1].finish_reason == "cancelled"


async def test_an_opened_chat_gets_exactly_the_text_posted_so_far(make_engine, store):
    sessions, posted, tasks = controller(store, make_engine())
    chat = await store.create_chat("c", None, {"max_tokens": 1900, "ignore_eos": True})
    sessions.send(chat, "stream")
    await until(lambda: (live := sessions.live(chat.id)) and len(live.parts) >= 50)
    snapshot = sessions.live(chat.id).snapshot()
    before = sum(1 for x in posted if isinstance(x, m.TokensStreamed))
    sessions.stop(chat.id)  # what streams between the snapshot and the stop is posted after it
    await finish(tasks)
    later = "".join(x.text for x in [x for x in posted if isinstance(x, m.TokensStreamed)][before:])
    assert snapshot.text + later == (await store.list_messages(chat.id))[-1].content


async def test_describe_names_the_chat_of_a_request(make_engine, store):
    sessions, _, tasks = controller(store, make_engine())
    chat = await store.create_chat("Trip to Rome", None, {"max_tokens": 1900, "ignore_eos": True})
    sessions.send(chat, "plan it")
    live = await until(lambda: (live := sessions.live(chat.id)) and live.state == "running" and live)
    assert sessions.describe(live.request_id) == ("chat: Trip to Rome", "chat")
    assert sessions.describe("0123456789abcdef")[1] == "other"
    sessions.stop(chat.id)
    await finish(tasks)


async def test_a_prompt_the_engine_rejects_fails_the_turn(make_engine, store):
    sessions, posted, tasks = controller(store, make_engine())
    chat = await store.create_chat("c", None, {})
    sessions.send(chat, "x" * 5000)  # longer than random:tiny's 2,048-token context
    with pytest.raises(Exception, match="context of 2048 tokens"):
        await finish(tasks)
    assert isinstance(posted[-1], m.GenerationFailed) and "context" in posted[-1].error
    assert not sessions.busy_chats()


# ---------------------------------------------------------------------------- regenerate, edit
async def stored_turn(store, chat_id, question, text, parent=None):
    """A question and its finished answer; returns (question, answer)."""
    q = await store.add_message(chat_id, "user", question, AFTER_SHOWN if parent is None else parent)
    a = await store.start_assistant_message(chat_id, q.id, "random:tiny", text)
    return q, await store.finish_message(a.id, text, "stop", 3, 4, 10.0, 20.0)


async def test_regenerate_answers_the_question_again_beside_the_old_answer(make_engine, store):
    """The prompt is the conversation down to the question (the old answer is not in it); the new answer is
    stored as its alternative, and the old one is kept."""
    engine = make_engine()
    sessions, posted, tasks = controller(store, engine)
    chat = await store.create_chat("c", "be brief", {"max_tokens": 5})
    q1, a1 = await stored_turn(store, chat.id, "first", "one")
    q2, old = await stored_turn(store, chat.id, "second", "two")
    prompts = spy_prompts(engine)
    sessions.regenerate(chat)
    await finish(tasks)
    assert prompts == [[{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
                        {"role": "assistant", "content": "one"}, {"role": "user", "content": "second"}]]
    set_aside = [x for x in posted if isinstance(x, m.AnswersSetAside)]
    assert [(x.chat_id, x.message_id) for x in set_aside] == [(chat.id, q2.id)]
    assert [x.alternatives for x in posted if isinstance(x, m.GenerationStarted)] == [2]
    new = posted[-1].message
    assert isinstance(posted[-1], m.GenerationFinished) and new.parent_id == q2.id
    branch = await store.branch(chat.id)
    assert [x.id for x in branch.messages] == [q1.id, a1.id, q2.id, new.id]
    assert branch.alternatives[new.id] == (old.id, new.id) and await store.get_message(old.id) is not None

    sessions.regenerate(chat)  # a third answer, beside both
    await finish(tasks)
    assert [x.alternatives for x in posted if isinstance(x, m.GenerationStarted)] == [2, 3]
    assert len((await store.branch(chat.id)).alternatives[posted[-1].message.id]) == 3


async def test_a_regenerate_that_stores_nothing_shows_the_old_answer_again(store):
    """Stopped before its first token (here: while it waits for the model), a regenerate leaves the old answer
    the one shown, and says so (`BranchChanged`) so the screen puts it back."""
    sessions, posted, tasks = controller(store)
    chat = await store.create_chat("c", None, {})
    q, old = await stored_turn(store, chat.id, "question", "the old answer")
    sessions.regenerate(chat)
    await finish(tasks)
    assert isinstance(posted[-1], m.GenerationQueued) and posted[-1].alternatives == 2
    assert sessions.stop(chat.id)
    assert [type(x) for x in posted[-2:]] == [m.GenerationFinished, m.BranchChanged]
    assert [x.id for x in (await store.branch(chat.id)).messages] == [q.id, old.id]


async def test_regenerate_without_a_question_fails_and_sets_nothing_aside(store):
    sessions, posted, tasks = controller(store)
    chat = await store.create_chat("c", None, {})
    sessions.regenerate(chat)
    with pytest.raises(Exception, match="nothing to regenerate"):
        await finish(tasks)
    assert not any(isinstance(x, (m.AnswersSetAside, m.BranchChanged)) for x in posted)


async def test_edit_and_resend_replaces_the_message_and_every_branch_below_it(make_engine, store):
    """Editing "second" deletes it with both its answers; the first question's other answer stays, and the
    edited message follows the answer "second" followed."""
    engine = make_engine()
    sessions, posted, tasks = controller(store, engine)
    chat = await store.create_chat("c", None, {"max_tokens": 5})
    q1, a1 = await stored_turn(store, chat.id, "first", "one")
    q2, a2 = await stored_turn(store, chat.id, "second", "two")
    await store.start_assistant_message(chat.id, q1.id, "random:tiny", "uno")  # alternatives: kept
    await store.start_assistant_message(chat.id, q2.id, "random:tiny", "deux")  # go with "second"
    await store.show_message(a2.id)
    prompts = spy_prompts(engine)
    sessions.edit_and_resend(chat, q2.id, "second, edited")
    await finish(tasks)
    assert [x["content"] for x in prompts[0]] == ["first", "one", "second, edited"]
    shown = (await store.branch(chat.id)).messages
    assert [x.content for x in shown][:3] == ["first", "one", "second, edited"] and shown[2].parent_id == a1.id
    deleted = [x for x in posted if isinstance(x, m.MessagesDeleted)]
    assert [(x.message_id, x.inclusive) for x in deleted] == [(q2.id, True)]
    assert sorted(x.content for x in await store.list_messages(chat.id))[:4] == ["first", "one", "second, edited",
                                                                                  "uno"]
    assert len(await store.list_messages(chat.id)) == 5  # first, one, uno, the edit and its answer


# ----------------------------------------------------------------------------------- helpers
def test_settings_round_trip_and_keep_other_params():
    settings = ChatSettings.from_chat("Be brief.", {"temperature": 0.2, "seed": 7, "top_k": 40})
    assert (settings.temperature, settings.seed, settings.max_tokens, settings.extra) == (0.2, 7, 512, {"top_k": 40})
    assert settings.to_params() == {"top_k": 40, "temperature": 0.2, "top_p": 1.0, "max_tokens": 512, "seed": 7}
    assert settings.sampling_params().top_k == 40


@pytest.mark.parametrize("form, error", [
    ({"temperature": "hot"}, "temperature: must be a number, got 'hot'"),
    ({"temperature": "-0.5"}, "temperature: must be >= 0"),
    ({"top_p": "0"}, "top_p: must be in (0, 1]"),
    ({"max_tokens": "1.5"}, "max_tokens: must be an integer"),
    ({"max_tokens": "0"}, "max_tokens: must be >= 1"),
    ({"seed": "abc"}, "seed: must be an integer"),
])
def test_settings_form_errors_name_the_field(form, error):
    full = {"system_prompt": "", "temperature": "1", "top_p": "1", "max_tokens": "64", "seed": "", **form}
    with pytest.raises(ValueError) as info:
        parse_settings(full)
    assert str(info.value).startswith(error)


def test_settings_form_parses_blank_seed_and_system_prompt():
    s = parse_settings({"system_prompt": "  ", "temperature": "0", "top_p": "0.5", "max_tokens": "9", "seed": ""})
    assert (s.system_prompt, s.temperature, s.top_p, s.max_tokens, s.seed) == (None, 0.0, 0.5, 9, None)


def test_first_code_block_and_key_labels():
    assert first_code_block("a\n```py\nx = 1\n```\nb\n```\ny\n```") == "x = 1\n"
    assert first_code_block("~~~\nz\n~~~") == "z\n" and first_code_block("no code") is None
    assert key_label("ctrl+n") == "Ctrl+N" and key_label("f1,question_mark") == "F1 / ?"


def test_prompt_keeps_the_system_prompt_and_non_empty_turns(tmp_path):
    class Msg:
        def __init__(self, role, content):
            self.role, self.content = role, content

    stored = [Msg("user", "hi"), Msg("assistant", ""), Msg("assistant", "hello"), Msg("tool", "x")]
    assert build_prompt("sys", stored) == [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "hello"}]
    assert build_prompt(None, stored)[0]["role"] == "user"


async def test_message_stats_line(store):
    chat = await store.create_chat("c")
    user = await store.add_message(chat.id, "user", "q")
    answer = await store.start_assistant_message(chat.id, user.id, "m")
    done = await store.finish_message(answer.id, "a", "cancelled", 3, 42, 35.4, 51.25)
    assert message_stats(done) == "42 tokens · TTFT 35 ms · 51.2 tok/s · stopped"
    again = await store.start_assistant_message(chat.id, user.id, "m")
    cut = await store.finish_message(again.id, "b", "stop", 600, 9, 120.2, 40.0, cached_tokens=512,
                                     dropped_messages=6)
    assert message_stats(cut) == "9 tokens · TTFT 120 ms · 512 cached · 40.0 tok/s · 6 earlier messages left out"


# ------------------------------------------------------------------------- the prefix cache
SYSTEM = "You are Baton's test assistant. Answer briefly, plainly and politely; never invent facts. " * 2


async def test_cached_prompt_tokens_grow_turn_by_turn_and_are_stored_with_each_answer(make_engine, store):
    """A chat's next turn resends the conversation: the engine's prefix cache serves what it has seen, so each
    answer's cached prompt tokens grow (turn 1: none; turn 2: at least the system prompt and the first
    question; turn 3: more), and each stored answer, and its stats line, says how many."""
    engine = make_engine(prefix_cache_bytes=64 << 20)
    sessions, posted, tasks = controller(store, engine)
    chat = await store.create_chat("c", SYSTEM, {"max_tokens": 8, "ignore_eos": True})
    answers = []
    for question in ("Where do sea otters sleep, and how do they keep from drifting away at night?",
                     "And what do they eat when the kelp forest is thin in the winter months?",
                     "How long do they live in the wild, compared with otters kept in aquariums?"):
        sessions.send(chat, question)
        await finish(tasks)
        assert isinstance(posted[-1], m.GenerationFinished) and posted[-1].finish_reason == "length"
        answers.append(posted[-1].message)
    cached = [a.cached_tokens for a in answers]
    assert cached[0] == 0 and 0 < cached[1] < cached[2], cached
    assert cached[1] >= 32 and all(c < a.prompt_tokens for c, a in zip(cached, answers))
    stored = [x for x in await store.list_messages(chat.id) if x.role == "assistant"]
    assert [x.cached_tokens for x in stored] == cached
    assert f"· {cached[2]} cached ·" in message_stats(stored[2]) and "cached" not in message_stats(stored[0])


# ------------------------------------------------------------------------ a chat past the context
async def test_a_chat_longer_than_the_context_leaves_out_its_oldest_turns_and_keeps_its_prefix(make_engine, store):
    """With a 1,024-token context a chat outgrows the model within a few turns. Each turn is still answered in full:
    the oldest turns are left out (the system prompt and the newest question stay), the answer records how many
    (its stats line says so), and the next turn starts from the same turn, so the engine's prefix cache serves
    the whole kept prompt again."""
    engine = make_engine(max_model_len=1024, prefix_cache_bytes=64 << 20)
    prompts = spy_prompts(engine)
    sessions, posted, tasks = controller(store, engine)
    chat = await store.create_chat("c", SYSTEM, {"max_tokens": 16, "ignore_eos": True, "temperature": 0})
    answers = []
    for turn in range(12):
        sessions.send(chat, f"Question {turn}: tell me one more thing about otters and the kelp forests they live in.")
        await finish(tasks)  # before fitting, the turn whose prompt passes the context failed here
        assert isinstance(posted[-1], m.GenerationFinished), posted[-1]
        answer = posted[-1].message
        assert (answer.finish_reason, answer.completion_tokens) == ("length", 16)  # a whole answer, not cut
        assert answer.prompt_tokens + 16 <= 1024
        answers.append(answer)
        if len(answers) >= 2 and answers[-2].dropped_messages:
            break
    trimmed, after = answers[-2], answers[-1]
    assert trimmed.dropped_messages > 0 and [a.dropped_messages for a in answers[:-2]] == [0] * (len(answers) - 2)
    thread = await store.thread(trimmed.parent_id)
    turns = [{"role": x.role, "content": x.content} for x in thread if x.role in ("user", "assistant")]
    sent = prompts[-2]
    assert sent[0] == {"role": "system", "content": SYSTEM} and sent[-1] == turns[-1]
    assert sent[1:] == turns[trimmed.dropped_messages:] and sent[1]["role"] == "user"
    assert f"{trimmed.dropped_messages} earlier messages left out" in message_stats(trimmed)
    fitted = [x for x in posted if isinstance(x, m.PromptFitted)]  # the screen is told before the answer streams
    assert [(x.chat_id, x.dropped_messages) for x in fitted] == [(chat.id, a.dropped_messages) for a in answers[-2:]]
    started = [i for i, x in enumerate(posted) if isinstance(x, m.GenerationStarted)][-2]
    first_text = next(i for i, x in enumerate(posted) if i > started and isinstance(x, m.TokensStreamed))
    assert started < posted.index(fitted[0]) < first_text
    # the next turn keeps the same start: its prompt begins with the whole trimmed prompt, served from the cache
    assert after.dropped_messages == trimmed.dropped_messages and prompts[-1][:len(sent)] == sent
    assert after.cached_tokens >= trimmed.prompt_tokens // 16 * 16 > 0
    stored = await store.get_message(after.id)
    assert (stored.dropped_messages, stored.cached_tokens) == (after.dropped_messages, after.cached_tokens)


async def test_a_message_too_long_for_the_context_on_its_own_fails_with_a_clear_error(make_engine, store):
    sessions, posted, tasks = controller(store, make_engine(max_model_len=256))
    chat = await store.create_chat("c", None, {"max_tokens": 16})
    sessions.send(chat, "otters " * 60)
    with pytest.raises(Exception, match="too long for the model's context of 256 tokens"):
        await finish(tasks)
    assert isinstance(posted[-1], m.GenerationFailed) and "256 tokens" in posted[-1].error
