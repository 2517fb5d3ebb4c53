"""`baton serve` end to end: a real server process (`--model random:tiny`) driven by the official `openai` client.

One server is shared by the module (it takes a while to import torch); the batch test kills it with SIGKILL
mid-batch and starts it again on the same database, and the drain test ends it with SIGTERM, so the fixture
starts it again whenever a test finds it gone. Responses are checked against the `openai` package's types
(`model_validate` on the raw JSON), and greedy texts against the in-process engine's for the same prompt.
Every wait is a bounded loop on a condition, never a fixed sleep.
"""

from __future__ import annotations

import http.client
import json
import signal
import sqlite3
import urllib.parse
from pathlib import Path

import openai
import pytest
from openai.types import Batch, Completion, FileObject, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from prometheus_client.parser import text_string_to_metric_families

from backend import Priority, SamplingParams

from serve_support import KEY, MAX_BODY, MESSAGES, MODEL, WAIT_S, ServerProcess, request, wait_for


@pytest.fixture(scope="module")
def _server_process(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("serve"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def server(_server_process) -> ServerProcess:
    return _server_process.ensure_running()


def greedy(engine, prompt, max_tokens: int) -> str:
    """The in-process engine's greedy answer."""
    result, = engine.generate_batch([prompt], SamplingParams(max_tokens=max_tokens, temperature=0),
                                    priority=Priority.INTERACTIVE)
    return result.text


# ------------------------------------------------------------------------------------------- chat completions
def test_a_chat_completion_is_the_in_process_engines_greedy_answer(server, make_engine):
    expected = greedy(make_engine(), MESSAGES, 24)
    raw = server.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0)
    completion = ChatCompletion.model_validate(raw.http_response.json())
    assert completion.object == "chat.completion" and completion.model == MODEL
    choice, = completion.choices
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", expected, "length")
    assert completion.usage.completion_tokens == 24
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 24
    assert 0 <= completion.usage.prompt_tokens_details.cached_tokens <= completion.usage.prompt_tokens


def test_a_streamed_chat_completion_is_the_same_answer_in_chunks(server, make_engine):
    expected = greedy(make_engine(), MESSAGES, 24)
    stream = server.client().chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True})
    chunks = [ChatCompletionChunk.model_validate(chunk.model_dump(exclude_unset=True)) for chunk in stream]
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    *deltas, usage = chunks
    assert deltas[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in deltas] == [None] * (len(deltas) - 1) + ["length"]
    assert "".join(c.choices[0].delta.content or "" for c in deltas) == expected
    assert all(c.usage is None for c in deltas)
    assert usage.choices == [] and usage.usage.completion_tokens == 24


def test_content_as_text_parts_and_a_priority_are_honoured(server, make_engine):
    expected = greedy(make_engine(), [{"role": "user", "content": "a\nb"}], 8)
    for priority in ("batch", 1, -3):
        completion = server.client().chat.completions.create(
            model=MODEL, max_tokens=8, temperature=0, extra_body={"priority": priority},
            messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
        assert completion.choices[0].message.content == expected


# ------------------------------------------------------------------------------ completions, models, stats
def test_completions_take_a_string_or_token_ids(server, make_engine):
    engine = make_engine()
    client = server.client()
    raw = client.completions.with_raw_response.create(model=MODEL, prompt="Once upon", max_tokens=10,
                                                      temperature=0)
    completion = Completion.model_validate(raw.http_response.json())
    assert completion.object == "text_completion"
    assert completion.choices[0].text == greedy(engine, "Once upon", 10)
    ids = engine.tokenize("Once upon")
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=10, temperature=0)
    assert by_ids.choices[0].text == completion.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)
    streamed = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=10, temperature=0,
                                         stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == completion.choices[0].text
    assert {c.object for c in chunks} == {"text_completion"} and len({c.id for c in chunks}) == 1
    # the type's finish_reason has no None, which every chunk but the last has (at OpenAI too)
    assert Completion.model_validate(chunks[-1].model_dump()).choices[0].finish_reason == "length"


def test_models_lists_the_served_model(server):
    client = server.client()
    models = client.models.list().data
    assert [Model.model_validate(m.model_dump()).id for m in models] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


# ------------------------------------------------------------------------------------------------- errors
LONG = "x" * 5000  # random:tiny: 2048 positions, one byte a token


@pytest.mark.parametrize("body,status,code,param", [
    ({"messages": []}, 400, "invalid_value", "messages"),
    ({"messages": MESSAGES, "tools": []}, 400, "unsupported_parameter", "tools"),
    ({"messages": MESSAGES, "n": 2}, 400, "unsupported_parameter", "n"),
    ({"messages": MESSAGES, "temperature": -1}, 400, "invalid_value", "temperature"),
    ({"messages": MESSAGES, "stream_options": {"include_usage": True}}, 400, "invalid_value", "stream_options"),
    ({"messages": MESSAGES, "priority": "urgent"}, 400, "invalid_value", "priority"),
    ({"messages": [{"role": "user", "content": LONG}]}, 400, "context_length_exceeded", "messages"),
    ({"messages": MESSAGES, "model": "gpt-4o"}, 404, "model_not_found", "model"),
    (b"{not json", 400, "invalid_json", None),
    (json.dumps({"messages": [{"role": "user", "content": "y" * MAX_BODY}]}).encode(), 413,
     "request_too_large", None),
], ids=["no-messages", "tools", "n", "temperature", "stream-options", "priority", "too-long", "model", "json",
        "too-large"])
def test_bad_requests_get_openai_errors_with_the_right_status(server, body, status, code, param):
    got, answer = request(server.url, "POST", "/v1/chat/completions", body)
    assert got == status, answer
    assert set(answer) == {"error"} and set(answer["error"]) == {"message", "type", "param", "code"}
    assert (answer["error"]["code"], answer["error"]["param"]) == (code, param)
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["message"]


def test_the_client_raises_openais_exceptions(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, logit_bias={"1": 5})
    assert info.value.code == "unsupported_parameter" and info.value.param == "logit_bias"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=["a", "b"])
    assert info.value.param == "prompt"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=MESSAGES)
    assert request(server.url, "GET", "/v1/nowhere")[0] == 404
    status, answer = request(server.url, "GET", "/v1/chat/completions")
    assert status == 405 and answer["error"]["code"] == "method_not_allowed"


def test_every_route_but_health_needs_the_key(server):
    with pytest.raises(openai.AuthenticationError) as info:
        server.client(key="wrong").models.list()
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    for path in ("/v1/models", "/metrics", "/v1/baton/stats", "/v1/batches"):
        status, answer = request(server.url, "GET", path, key=None)
        assert status == 401 and answer["error"]["code"] == "invalid_api_key", path
    assert request(server.url, "POST", "/v1/chat/completions", {"messages": MESSAGES}, key="wrong")[0] == 401
    assert request(server.url, "GET", "/health", key=None) == (200, {"status": "ok"})


# --------------------------------------------------------------------------------------- streams and stats
def test_a_stream_closed_early_frees_its_row_at_once(server):
    def stats() -> dict:
        return request(server.url, "GET", "/v1/baton/stats")[1]

    cancelled = stats()["counters"].get("num_requests_cancelled", 0)
    stream = server.client().chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=1500, stream=True, extra_body={"ignore_eos": True,
                                                                                  "priority": "agent"})
    chunks = iter(stream)
    request_id = next(chunks).id.removeprefix("chatcmpl-")
    next(chunks)
    rows = wait_for(lambda: [r for r in stats()["rows"] if r["request_id"] == request_id], "its row")
    assert rows[0]["priority"] == "agent"
    stream.close()

    def freed() -> bool:
        now = stats()
        return (all(r["request_id"] != request_id for r in now["rows"] + now["waiting"])
                and now["counters"].get("num_requests_cancelled", 0) == cancelled + 1)

    wait_for(freed, "the row to leave the batch")  # cancelled, not run to its 1500 tokens


def test_a_client_that_leaves_a_whole_answer_cancels_it(server):
    def stats() -> dict:
        return request(server.url, "GET", "/v1/baton/stats")[1]

    cancelled = stats()["counters"].get("num_requests_cancelled", 0)
    parsed = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=WAIT_S)
    conn.request("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                 body=json.dumps({"messages": MESSAGES, "max_tokens": 1500, "ignore_eos": True}))
    wait_for(lambda: stats()["rows"], "its row")
    conn.close()  # before the answer: nobody is listening any more
    wait_for(lambda: not stats()["rows"] and stats()["counters"].get("num_requests_cancelled", 0) == cancelled + 1,
             "the row to leave the batch")


def test_metrics_are_prometheus_text_with_vllms_names(server):
    server.client().chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    status, text = request(server.url, "GET", "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("baton:num_requests_running", "baton:num_requests_waiting", "baton:num_requests_swapped",
                 "baton:kv_cache_usage_perc"):
        assert families[name].type == "gauge", name
        assert families[name].samples[0].labels == {"model_name": MODEL}
    for name in ("baton:prompt_tokens", "baton:generation_tokens", "baton:num_preemptions",
                 "baton:prefix_cache_queries", "baton:prefix_cache_hits"):
        assert families[name].type == "counter" and families[name].samples[0].name == name + "_total"
    assert families["baton:generation_tokens"].samples[0].value >= 4
    for name in ("baton:time_to_first_token_seconds", "baton:time_per_output_token_seconds",
                 "baton:e2e_request_latency_seconds"):
        count = next(s for s in families[name].samples if s.name == name + "_count")
        assert families[name].type == "histogram" and count.value >= 1, name
    assert 0 <= families["baton:kv_cache_usage_perc"].samples[0].value <= 1


# -------------------------------------------------------------------------------------------- the Batch API
def batch_lines(n: int, max_tokens: int) -> bytes:
    lines = [json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": MODEL, "messages": [{"role": "user", "content": f"count to {i}"}],
                                  "max_tokens": max_tokens, "ignore_eos": True}}) for i in range(n)]
    lines.append(json.dumps({"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
                             "body": {"messages": MESSAGES, "tools": []}}))
    return ("\n".join(lines) + "\n").encode()


def job_row(db: Path, job_id: int) -> tuple[str, int]:
    """`(status, pending items)` of a job, read from the database file."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        status, = conn.execute("SELECT status FROM job WHERE id = ?", (job_id,)).fetchone()
        pending, = conn.execute("SELECT count(*) FROM job_item WHERE job_id = ? AND status = 'pending'",
                                (job_id,)).fetchone()
        return status, pending
    finally:
        conn.close()


def test_a_batch_can_be_cancelled_and_bad_batches_are_refused(server):
    client = server.client()
    uploaded = client.files.create(file=("c.jsonl", batch_lines(8, 1000)), purpose="batch")
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    assert info.value.param == "endpoint"
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-999999", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_999999")
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("x.jsonl", b"{}"), purpose="fine-tune")
    assert info.value.param == "purpose"
    status, answer = request(server.url, "POST", "/v1/files", {"purpose": "batch"})  # JSON, not a form
    assert (status, answer["error"]["code"]) == (400, "invalid_request")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    job_id = int(batch.id.removeprefix("batch_"))
    wait_for(lambda: job_row(server.db, job_id)[0] == "running", "the batch to run")
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    assert client.batches.cancel(batch.id).status == "cancelled"  # again: the same
    errors = client.files.content(cancelled.error_file_id).text.splitlines()
    codes = [json.loads(line)["error"]["code"] for line in errors]
    assert codes[-1] == "unsupported_parameter" and set(codes[:-1]) <= {"batch_cancelled"} and len(codes) == 9 - (
        cancelled.request_counts.completed)
    wait_for(lambda: not request(server.url, "GET", "/v1/baton/stats")[1]["rows"], "its rows to leave the batch")


def test_the_batch_api_round_trip_survives_a_sigkill(server):
    items = 12  # 3 rounds of 4 rows (--max-batch-size 4): the kill comes after the first
    client = server.client()
    uploaded = client.files.create(file=("requests.jsonl", batch_lines(items, 100)), purpose="batch")
    assert FileObject.model_validate(uploaded.model_dump()).purpose == "batch"
    assert client.files.content(uploaded.id).content == batch_lines(items, 100)
    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                    completion_window="24h", metadata={"run": "kill"})
    assert Batch.model_validate(created.model_dump()).status == "in_progress"
    assert created.request_counts.total == items + 1

    done = wait_for(lambda: client.batches.retrieve(created.id).request_counts.completed, "a line to finish")
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    assert done < items, "the kill came too late to test a resume"

    client = server.ensure_running().client()  # the same database
    assert client.batches.retrieve(created.id).status == "in_progress"
    final = wait_for(lambda: (b := client.batches.retrieve(created.id)).status == "completed" and b,
                     "the batch to complete")
    assert Batch.model_validate(final.model_dump()).request_counts.model_dump() == {
        "total": items + 1, "completed": items, "failed": 1}
    assert final.metadata == {"run": "kill"} and final.completed_at is not None
    output = [json.loads(line) for line in client.files.content(final.output_file_id).text.splitlines()]
    errors = [json.loads(line) for line in client.files.content(final.error_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in output) == sorted(f"req-{i}" for i in range(items))
    for line in output:
        body = ChatCompletion.model_validate(line["response"]["body"])
        assert body.usage.completion_tokens == 100 and line["error"] is None
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [("bad", "unsupported_parameter")]
    assert created.id in [b.id for b in client.batches.list(limit=100)]


def test_sigterm_drains_streams_and_leaves_batch_lines_queued(server):
    client = server.client()
    uploaded = client.files.create(file=("long.jsonl", batch_lines(12, 1000)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    job_id = int(batch.id.removeprefix("batch_"))
    wait_for(lambda: job_row(server.db, job_id)[0] == "running", "the batch to run")
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1900, stream=True,
                                            extra_body={"ignore_eos": True})
    chunks = iter(stream)
    next(chunks)
    server.proc.send_signal(signal.SIGTERM)
    rest = list(chunks)  # ends at [DONE] (the client raises if the connection is cut)
    assert rest and rest[-1].choices[0].finish_reason in ("length", "stop")
    assert server.proc.wait(WAIT_S) == 0, server.log.read_text()
    status, pending = job_row(server.db, job_id)
    assert status == "queued" and pending > 0
