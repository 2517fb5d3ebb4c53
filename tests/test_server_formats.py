"""The server's request formats and objects without a server: the HTTP-only chat fields (`stream`,
`stream_options`, `priority`), the completions body, the Batch API's objects, the loopback rule, and
`baton serve` refusing what it cannot start with (before any model loads)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from app.chat.completions import RequestError, chat_completion_chunk, parse_body, parse_priority
from app.chat.text_completions import parse_completion_body, text_completion
from app.cli import main
from app.server.auth import check_bind, is_loopback
from app.server.batch_objects import batch_object, output_content, output_kinds, parse_batch_id, parse_file_id
from app.server.errors import APIError
from backend import Priority
from storage import Job, JobItem

MSGS = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("value,expected", [
    ("interactive", Priority.INTERACTIVE), ("agent", Priority.AGENT), ("batch", Priority.BATCH),
    (0, Priority.INTERACTIVE), (-10, Priority.INTERACTIVE), (1, Priority.AGENT), (2, Priority.BATCH),
    (99, Priority.BATCH),
])
def test_priority_takes_batons_names_and_vllms_integers(value, expected):
    assert parse_priority(value) == expected


@pytest.mark.parametrize("value", ["urgent", "INTERACTIVE", True, 1.5, None, [0]])
def test_any_other_priority_is_an_error_naming_the_field(value):
    with pytest.raises(RequestError) as info:
        parse_priority(value)
    assert (info.value.code, info.value.param) == ("invalid_value", "priority")


def test_stream_and_priority_are_honoured_over_http_only():
    body = {"messages": MSGS, "stream": True, "stream_options": {"include_usage": True}, "priority": "batch"}
    request = parse_body(body, over_http=True, default_max_tokens=100)
    assert (request.stream, request.include_usage, request.priority) == (True, True, Priority.BATCH)
    assert request.sampling["max_tokens"] == 100
    assert parse_body({"messages": MSGS, "stream": False}, over_http=True).stream is False
    for field, value in (("stream", True), ("priority", "batch"), ("stream_options", {"include_usage": True})):
        with pytest.raises(RequestError) as info:  # a batch line: never streamed, always BATCH
            parse_body({"messages": MSGS, field: value})
        assert (info.value.code, info.value.param) == ("unsupported_parameter", field)


@pytest.mark.parametrize("body,param", [
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"stream": True, "stream_options": {"include_usage": True, "x": 1}}, "stream_options"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"messages": [{"role": "user", "content": "a\ud83d"}]}, "messages[0].content"),
    ({"messages": [{"role": "robot", "content": "a"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "a", "name": "x"}]}, "messages[0].name"),
])
def test_a_refused_field_is_named_as_openais_param(body, param):
    with pytest.raises(RequestError) as info:
        parse_body({"messages": MSGS, **body}, over_http=True)
    assert info.value.param == param


def test_chunks_carry_a_null_usage_when_a_usage_chunk_follows():
    chunk = chat_completion_chunk("r", "m", 1, content="a", include_usage=True)
    assert chunk["usage"] is None
    assert "usage" not in chat_completion_chunk("r", "m", 1, content="a")


@pytest.mark.parametrize("prompt,expected", [("hi", "hi"), ([1, 2], [1, 2]), (["hi"], "hi"), ([[3]], [3])])
def test_a_completion_prompt_is_a_string_or_token_ids(prompt, expected):
    request = parse_completion_body({"prompt": prompt, "priority": 2})
    assert (request.prompt, request.sampling["max_tokens"], request.priority) == (expected, 16, Priority.BATCH)


@pytest.mark.parametrize("body,code,param", [
    ({"prompt": ["a", "b"]}, "unsupported_parameter", "prompt"),
    ({"prompt": ""}, "invalid_value", "prompt"),
    ({"prompt": [1, True]}, "invalid_value", "prompt"),
    ({"prompt": "a", "echo": True}, "unsupported_parameter", "echo"),
    ({"prompt": "a", "suffix": "b"}, "unsupported_parameter", "suffix"),
    ({"prompt": "a", "logprobs": 2}, "unsupported_parameter", "logprobs"),
])
def test_a_completion_body_refuses_what_it_cannot_honour(body, code, param):
    with pytest.raises(RequestError) as info:
        parse_completion_body(body)
    assert (info.value.code, info.value.param) == (code, param)


def test_a_text_completion_has_openais_shape():
    whole = text_completion("r", "m", "hey", "stop", 5, usage_counts=(2, 1, 1))
    assert whole == {"id": "cmpl-r", "object": "text_completion", "created": 5, "model": "m",
                     "choices": [{"index": 0, "text": "hey", "logprobs": None, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3,
                               "prompt_tokens_details": {"cached_tokens": 1}}}


def _job(status: str, done: int, failed: int, total: int = 3) -> Job:
    t = datetime(2026, 1, 2, tzinfo=timezone.utc)
    spec = {"format": "openai_batch", "batch": {"input_file_id": "file-1", "endpoint": "/v1/chat/completions",
                                                "completion_window": "24h", "metadata": None}}
    return Job(7, "batch", "in.jsonl", status, None, spec, total, done, failed, t, t)


@pytest.mark.parametrize("status,done,failed,batch_status,files", [
    ("queued", 0, 0, "in_progress", []), ("running", 1, 0, "in_progress", []),
    ("paused", 1, 0, "in_progress", []), ("done", 3, 0, "completed", ["output"]),
    ("done", 2, 1, "completed", ["output", "errors"]), ("done", 0, 3, "completed", ["errors"]),
    ("cancelled", 1, 0, "cancelled", ["output", "errors"]), ("cancelled", 3, 0, "cancelled", ["output"]),
])
def test_a_batch_jobs_status_and_files(status, done, failed, batch_status, files):
    job = _job(status, done, failed)
    batch = batch_object(job, "m")
    assert batch["status"] == batch_status and output_kinds(job) == files
    assert batch["request_counts"] == {"total": 3, "completed": done, "failed": failed}
    assert (batch["output_file_id"] is not None, batch["error_file_id"] is not None) == (
        "output" in files, "errors" in files)
    final_at = {"completed": "completed_at", "cancelled": "cancelled_at"}.get(batch_status)
    assert all((batch[k] is not None) == (k == final_at) for k in ("completed_at", "cancelled_at", "failed_at"))


def test_a_batch_output_file_holds_its_lines_in_input_order():
    job = _job("cancelled", 1, 1)
    items = [JobItem(1, 7, 0, "a", {}, "failed", None, "invalid_value: line 1: bad", None),
             JobItem(2, 7, 1, "b", {}, "done", {"custom_id": "b", "response": {}, "error": None}, None, None),
             JobItem(3, 7, 2, "c", {}, "pending", None, None, None)]
    assert output_content(job, items, "output") == b'{"custom_id":"b","response":{},"error":null}\n'
    errors = output_content(job, items, "errors").decode().splitlines()
    assert ['"custom_id":"a"' in errors[0], '"invalid_value"' in errors[0]] == [True, True]
    assert '"custom_id":"c"' in errors[1] and '"batch_cancelled"' in errors[1]


def test_ids_parse_back_and_others_are_404():
    assert parse_file_id("file-12") == ("input", 12)
    assert parse_file_id("file-batch_3-output") == ("output", 3)
    assert parse_file_id("file-batch_3-errors") == ("errors", 3)
    assert parse_batch_id("batch_3") == 3
    for bad in ("file-x", "file-batch_3-other", "12"):
        with pytest.raises(APIError) as info:
            parse_file_id(bad)
        assert info.value.status == 404
    with pytest.raises(APIError):
        parse_batch_id("batch_")


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True),
                                           ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                           ("::", False), ("192.168.1.10", False), ("no-such-host.invalid", False)])
def test_only_loopback_hosts_may_serve_without_a_key(host, loopback):
    assert is_loopback(host) is loopback
    check_bind(host, "key")  # with a key, any host
    if not loopback:
        with pytest.raises(ValueError, match="without an API key"):
            check_bind(host, None)


@pytest.mark.parametrize("argv,message", [
    (["--host", "0.0.0.0"], "--host 0.0.0.0: refusing to serve on an address other machines can reach without an "
                            "API key"),
    (["--api-key", ""], "--api-key: must not be empty"),
    (["--port", "70000"], "--port: must be in 0..65535"),
    (["--drain-timeout", "-1"], "--drain-timeout: must be >= 0"),
])
def test_serve_refuses_bad_options_before_loading_a_model(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("BATON_API_KEY", raising=False)
    assert main(["serve", "--model", "random:tiny", *argv]) == 2
    assert message in capsys.readouterr().err


def test_serve_refuses_an_unusable_database(tmp_path, capsys):
    assert main(["serve", "--model", "random:tiny", "--db", str(tmp_path / "nowhere" / "b.db")]) == 2
    assert "does not exist" in capsys.readouterr().err
