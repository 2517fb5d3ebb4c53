"""Baton on a remote engine (`--backend URL`): a real `baton serve --model random:tiny` subprocess (shared with
`tests/test_server.py` through `serve_support`) driven by `RemoteEngine` and the `baton` commands, whose
greedy texts must equal the in-process engine's; faults (connection refused, a stream cut mid-answer) end as
clear errors. Every wait is a bounded loop on a condition, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

from app.chat.engine_api import REMOTE_TOKEN_ID, ChatEngine, prompt_token_counter
from app.cli import main
from app.remote import RemoteEngine
from backend import Engine, Priority, SamplingParams
from serve_support import KEY, WAIT_S, ServerProcess
from tui_support import config_dir  # noqa: F401  (preferences in a throwaway folder for the TUI test)

QUESTION = "Name three colors."
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("remote"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def remote(server):
    engine = RemoteEngine(server.url, api_key=KEY).start()
    yield engine
    engine.shutdown()


def greedy(engine: Engine, messages: list[dict], max_tokens: int = MAX_TOKENS) -> str:
    result, = engine.generate_batch([messages], SamplingParams(max_tokens=max_tokens, temperature=0),
                                    priority=Priority.INTERACTIVE)
    return result.text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_both_engines_satisfy_the_apps_engine_interface(make_engine, remote):
    local = make_engine(max_model_len=256)
    assert isinstance(local, ChatEngine) and isinstance(remote, ChatEngine)
    assert remote.model.name == "random:tiny" and remote.max_model_len > 0
    # only the in-process engine counts prompt tokens: a chat on a remote one is sent whole, never fitted
    assert prompt_token_counter(remote) is None
    count, messages = prompt_token_counter(local), [{"role": "user", "content": QUESTION}]
    assert count(messages) == len(local.tokenize(messages))
    assert count([{"role": "user", "content": "x" * 100_000}]) == 257  # refused unread: more than the context


def test_baton_chat_on_a_backend_is_the_in_process_engines_greedy_answer(server, make_engine, capsys):
    expected = greedy(make_engine(), [{"role": "user", "content": QUESTION}])
    status = main(["chat", "--backend", server.url, "--api-key", KEY, "--temperature", "0",
                   "--max-tokens", str(MAX_TOKENS), QUESTION])
    out = capsys.readouterr()
    assert status == 0, out.err
    assert out.out == expected + "\n"


def test_a_stream_carries_tokens_usage_and_the_stats_of_a_baton_serve(remote, make_engine):
    messages = [{"role": "user", "content": "hello"}]

    async def collect():
        return [o async for o in remote.generate(messages, SamplingParams(max_tokens=MAX_TOKENS, temperature=0),
                                                 priority=Priority.AGENT)]

    outs = asyncio.run(collect())
    assert "".join(o.text for o in outs) == greedy(make_engine(), messages)
    assert all(o.token_id == REMOTE_TOKEN_ID for o in outs[:-1]) and outs[-1].finished
    assert outs[-1].prompt_tokens > 0 and outs[-1].completion_tokens == MAX_TOKENS
    assert remote.stats_source == "baton" and remote.stats().model == "random:tiny"


def test_a_stream_carries_the_prompt_tokens_the_servers_prefix_cache_served(remote):
    """The server's usage (`prompt_tokens_details.cached_tokens`) reaches the app's `TokenOutput.cached_tokens`,
    so a chat's stats line says it on a remote engine too: the same long prompt sent again hits the cache."""
    long = [{"role": "system", "content": "You are a patient assistant who answers in full sentences. " * 3},
            {"role": "user", "content": "hello again, cache"}]

    async def last() -> object:
        return [o async for o in remote.generate(long, SamplingParams(max_tokens=MAX_TOKENS, temperature=0))][-1]

    first, again = asyncio.run(last()), asyncio.run(last())
    assert first.cached_tokens == 0 < again.cached_tokens < again.prompt_tokens and again.finished


def test_cancel_closes_the_stream_and_frees_the_servers_row(remote):
    async def run() -> list:
        outs = []
        async for out in remote.generate([{"role": "user", "content": "go"}],
                                         SamplingParams(max_tokens=4000, ignore_eos=True), request_id="r1"):
            outs.append(out)
            if len(outs) == 2:
                assert remote.cancel("r1") is True
        return outs

    outs = asyncio.run(run())
    assert outs[-1].finish_reason == "cancelled" and len(outs) >= 3
    assert remote.cancel("r1") is False
    deadline = time.monotonic() + WAIT_S
    while remote._read_stats().batch_size:  # the server's own snapshot, read now
        assert time.monotonic() < deadline, "the server kept the cancelled row"


def test_a_job_runs_through_a_backend(server, make_engine, tmp_path, capsys):
    db, inp, out = tmp_path / "jobs.db", tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    bodies = [{"messages": [{"role": "user", "content": f"item {i}"}], "max_tokens": 6, "temperature": 0}
              for i in range(2)]
    inp.write_text("".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                                       "body": b}) + "\n" for i, b in enumerate(bodies)))
    assert main(["jobs", "submit", str(inp), "--db", str(db)]) == 0
    status = main(["jobs", "run", "--db", str(db), "--backend", server.url, "--api-key", KEY])
    assert status == 0, capsys.readouterr().err
    assert main(["jobs", "export", "1", "-o", str(out), "--db", str(db)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    engine = make_engine()
    assert [line["response"]["body"]["choices"][0]["message"]["content"] for line in lines] == \
           [greedy(engine, b["messages"], 6) for b in bodies]


def test_a_refused_connection_is_one_clear_error(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["chat", "--backend", url, "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("baton: error: cannot reach") and url in err and "refused" in err.lower()


@pytest.mark.parametrize("argv,message", [
    (["chat", "--api-key", "k", "hi"], "--api-key: only with --backend"),
    (["chat", "--backend", "ftp://host", "hi"], "--backend: must be an http:// or https:// URL"),
    (["chat", "--backend", "http://host", "--api-key", "", "hi"], "--api-key: must not be empty"),
    (["--listen", "host:port"], "--listen: must be [HOST:]PORT"),
    (["--listen-key", "k"], "--listen-key: only with --listen"),
    (["--listen", "8000", "--backend", "http://host"], "--listen: serves the in-process engine"),
])
def test_remote_and_listen_options_are_checked_before_anything_starts(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def sse(*chunks: dict, done: bool = True) -> bytes:
    """A chunked `text/event-stream` HTTP response of these chat-completion chunks (and `[DONE]`); without
    `done` the connection just closes after them (a cut stream)."""
    events = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + ([b"data: [DONE]\n\n"] if done else [])
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + (b"0\r\n\r\n" if done else b"")
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + body


def delta(text: str | None, finish: str | None = None) -> dict:
    return {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]}


def json_response(status: int, payload: dict) -> bytes:
    body = json.dumps(payload).encode()
    return (b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (status, len(body), body))


class FakeServer:
    """A loopback HTTP server that lists one model (`m`) and answers each chat completion with the next of
    `answers` (raw HTTP responses, the connection closed after each); `bodies` holds the JSON bodies it got."""

    def __init__(self, *answers: bytes):
        self.answers, self.bodies = list(answers), []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += conn.recv(65536)
                if head.startswith(b"GET /v1/models"):
                    conn.sendall(json_response(200, {"object": "list", "data": [{"id": "m", "object": "model"}]}))
                elif head.startswith(b"POST") and self.answers:
                    self.bodies.append(json.loads(body))
                    conn.sendall(self.answers.pop(0))
                else:
                    conn.sendall(json_response(404, {"error": {"message": "not found"}}))

    def close(self) -> None:
        self.sock.close()


def answer(url: str, priority: Priority = Priority.INTERACTIVE) -> list:
    engine = RemoteEngine(url).start()
    try:
        async def collect():
            return [o async for o in engine.generate([{"role": "user", "content": "hi"}], priority=priority)]

        return asyncio.run(collect())
    finally:
        engine.shutdown()


def test_a_stream_cut_mid_answer_ends_in_an_error_and_keeps_the_partial_answer():
    fake = FakeServer(sse(delta("partial"), done=False))
    try:
        outs = answer(fake.url)
    finally:
        fake.close()
    assert "".join(o.text for o in outs) == "partial"
    assert outs[-1].finish_reason == "error" and fake.url in outs[-1].error


def test_a_5xx_is_an_error_answer_and_a_4xx_a_value_error():
    fake = FakeServer(json_response(503, {"error": {"message": "overloaded"}}),
                      json_response(400, {"error": {"message": "prompt too long", "code": "context_length_exceeded"}}))
    try:
        outs = answer(fake.url)
        with pytest.raises(ValueError, match="prompt too long"):
            answer(fake.url)
    finally:
        fake.close()
    assert [o.finish_reason for o in outs] == ["error"] and "503" in outs[0].error


def test_a_server_that_refuses_priorities_gets_the_request_again_without_one():
    refusal = json_response(400, {"error": {"message": "Got priority 2 but Priority scheduling is not enabled."}})
    fake = FakeServer(refusal, sse(delta("ok"), delta(None, "stop")))
    try:
        outs = answer(fake.url, Priority.BATCH)
    finally:
        fake.close()
    assert "".join(o.text for o in outs) == "ok" and outs[-1].finish_reason == "stop"
    assert fake.bodies[0]["priority"] == 2 and "priority" not in fake.bodies[1]


def test_vllm_metrics_and_request_fields():
    from app.remote.stats import vllm_gauges
    from app.remote.wire import request_fields

    text = ('# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="m"} 3.0\n'
            '# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name="m"} 1.0\n'
            '# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name="m"} 0.25\n')
    assert vllm_gauges(text) == {"num_requests_running": 3, "num_requests_waiting": 1, "kv_cache_usage_perc": 0.25}
    params = SamplingParams(max_tokens=5, temperature=0, top_k=4, stop="x", seed=3)
    fields, extra = request_fields(params, Priority.AGENT, baton=False)
    assert fields == {"max_tokens": 5, "temperature": 0, "top_p": 1.0, "seed": 3, "stop": ["x"]}
    assert extra == {"priority": 1, "top_k": 4}
    assert request_fields(params, Priority.AGENT, baton=True)[1]["priority"] == "agent"


async def test_the_tui_chats_through_a_backend_and_escape_keeps_the_partial_answer(server, tmp_path):
    from app.tui import BatonApp
    from app.tui.widgets.live_panel import LivePanel
    from storage import Store
    from tui_support import SIZE, idle, new_chat, ready, send, wait_for

    engine = RemoteEngine(server.url, api_key=KEY)  # not started: the app starts it in a thread, as `baton`
    async with await Store.open(tmp_path / "baton.db") as store:
        app = BatonApp(engine=engine, store=store)
        async with app.run_test(size=SIZE) as pilot:
            screen = await ready(pilot)
            chat_id = await new_chat(pilot)
            await store.update_chat_settings(chat_id, None, {"max_tokens": MAX_TOKENS, "temperature": 0.0})
            await send(pilot, QUESTION)
            await idle(pilot)
            await pilot.press("ctrl+b")  # the live panel shows the server's own snapshot, labelled so
            panel = await wait_for(pilot, lambda: screen.query(LivePanel).first() if screen.query(LivePanel)
                                   else None, what="the live panel")
            panel.refresh_now()
            assert "baton serve stats" in str(panel.query_one("#device").render())
            await store.update_chat_settings(chat_id, None, {"max_tokens": 1900, "ignore_eos": True})
            await send(pilot, "never stop talking")
            await wait_for(pilot, lambda: (g := screen.sessions.live(chat_id)) and g.message_id and len(g.text) > 8,
                           what="some streamed text")
            await pilot.press("escape")
            await idle(pilot)
        first, second = [m for m in await store.list_messages(chat_id) if m.role == "assistant"]
    assert not engine.started  # the app shut down the engine it started
    assert (first.finish_reason, first.completion_tokens, first.model) == ("length", MAX_TOKENS, "random:tiny")
    assert second.finish_reason == "cancelled" and second.content and 0 < second.completion_tokens < 1900


async def test_the_tui_with_listen_serves_its_engine_over_http(make_engine, tmp_path):
    import openai

    from app.server.embedded import EmbeddedServer
    from app.tui import BatonApp
    from storage import Store
    from tui_support import SIZE, ready, wait_for

    engine = make_engine()
    listener = EmbeddedServer.bind("127.0.0.1", 0, api_key="k")
    messages = [{"role": "user", "content": QUESTION}]
    async with await Store.open(tmp_path / "baton.db") as store:
        app = BatonApp(engine=engine, store=store, listener=listener)
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            await wait_for(pilot, lambda: listener._server is not None and listener._server.started,
                           what="the listener")
            client = openai.OpenAI(base_url=listener.url + "/v1", api_key="k", max_retries=0, timeout=WAIT_S)
            answer = await asyncio.to_thread(client.chat.completions.create, model="random:tiny",
                                             messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    assert answer.choices[0].message.content == greedy(engine, messages)
    assert listener._server is None  # stopped with the app


def test_listen_refuses_another_host_without_a_key(capsys, monkeypatch):
    monkeypatch.delenv("BATON_API_KEY", raising=False)
    assert main(["--listen", "0.0.0.0:0"]) == 2
    assert "refusing to serve" in capsys.readouterr().err


async def test_the_tui_keeps_a_cut_answer_and_says_why(tmp_path):
    from app.tui import BatonApp
    from storage import Store
    from tui_support import SIZE, idle, new_chat, ready, send

    fake = FakeServer(sse(delta("half an ans"), done=False))
    try:
        async with await Store.open(tmp_path / "baton.db") as store:
            app = BatonApp(engine=RemoteEngine(fake.url), store=store)
            async with app.run_test(size=SIZE) as pilot:
                await ready(pilot)
                chat_id = await new_chat(pilot)
                await send(pilot, "hello")
                await idle(pilot)
            answer = (await store.list_messages(chat_id))[-1]
    finally:
        fake.close()
    assert (answer.role, answer.content, answer.finish_reason) == ("assistant", "half an ans", "error")
