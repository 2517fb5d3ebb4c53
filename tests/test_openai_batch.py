"""The OpenAI Batch file format (app/chat/batch_file.py, app/chat/completions.py): parsing input lines and building output lines.

Pure functions, no model: these run in milliseconds.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from app.chat import batch_file as ob
from app.chat.completions import DEFAULT_MAX_TOKENS
from app.chat.batch_file import BatchRequest, LineError
from app.chat.completions import RequestError, parse_body

MSGS = [{"role": "user", "content": "hi"}]


def line(body=None, **fields) -> bytes:
    obj = {"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
           "body": {"messages": MSGS} if body is None else body}
    obj.update(fields)
    return json.dumps(obj).encode()


def test_valid_line_maps_every_honoured_field():
    body = {"model": "gpt-4o", "messages": MSGS, "max_completion_tokens": 7, "temperature": 0.5, "top_p": 0.9,
            "seed": 3, "stop": ["\n", "END"], "top_k": 20, "ignore_eos": True, "n": 1, "stream": False,
            "user": "me", "logprobs": False, "presence_penalty": 0, "frequency_penalty": 0.0,
            "response_format": {"type": "text"}}
    req = ob.parse_line(line(body), 1)
    assert isinstance(req, BatchRequest)
    assert req.custom_id == "x" and req.messages == MSGS
    assert req.sampling == {"max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": ["\n", "END"],
                            "top_k": 20, "ignore_eos": True}


def test_defaults_are_openais_and_null_means_absent():
    req = ob.parse_line(line({"messages": MSGS, "temperature": None, "max_tokens": None, "stop": None}), 1)
    assert req.sampling == {"max_tokens": DEFAULT_MAX_TOKENS, "temperature": 1.0, "top_p": 1.0}


def test_developer_role_and_text_parts():
    body = {"messages": [{"role": "developer", "content": "be terse"},
                         {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}
    req = ob.parse_line(line(body), 1)
    assert req.messages == [{"role": "system", "content": "be terse"}, {"role": "user", "content": "a\nb"}]


@pytest.mark.parametrize("raw, code, custom_id", [
    (b"{not json", "invalid_json_line", None),
    (b"\xff\xfe", "invalid_json_line", None),
    (b"[1, 2]", "invalid_request", None),
    (line(custom_id=None), "missing_custom_id", None),
    (line(custom_id=""), "invalid_request", None),
    (line(custom_id=5), "invalid_request", None),
    (line(method="GET"), "invalid_method", "x"),
    (line(url="/v1/embeddings"), "invalid_url", "x"),
    (line(extra=1), "invalid_request", "x"),
    (line(body=[1]), "invalid_request", "x"),
    (line({"messages": []}), "invalid_value", "x"),
    (line({"messages": "hi"}), "invalid_value", "x"),
    (line({}), "invalid_value", "x"),
    (line({"messages": [{"role": "tool", "content": "x"}]}), "invalid_value", "x"),
    (line({"messages": [{"role": "user", "content": 3}]}), "invalid_value", "x"),
    (line({"messages": [{"role": "user", "content": "x", "name": "bob"}]}), "unsupported_parameter", "x"),
    (line({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
     "unsupported_parameter", "x"),
    (line({"messages": MSGS, "n": 2}), "unsupported_parameter", "x"),
    (line({"messages": MSGS, "n": True}), "unsupported_parameter", "x"),
    (line({"messages": MSGS, "stream": True}), "unsupported_parameter", "x"),
    (line({"messages": MSGS, "logprobs": True}), "unsupported_parameter", "x"),
    (line({"messages": MSGS, "presence_penalty": 0.5}), "unsupported_parameter", "x"),
    (line({"messages": MSGS, "response_format": {"type": "json_object"}}), "unsupported_parameter", "x"),
    (line({"messages": MSGS, "tools": [{"type": "function"}]}), "unsupported_parameter", "x"),
    (line({"messages": MSGS, "logit_bias": {"1": 2}}), "unsupported_parameter", "x"),
    (line({"messages": MSGS, "max_tokens": 3, "max_completion_tokens": 3}), "invalid_value", "x"),
    (line({"messages": MSGS, "model": 4}), "invalid_value", "x"),
])
def test_bad_lines_give_a_line_error(raw, code, custom_id):
    err = ob.parse_line(raw, 7)
    assert isinstance(err, LineError), err
    assert (err.code, err.custom_id, err.line_no) == (code, custom_id, 7)
    assert err.message.startswith("line 7: ")


def test_parse_input_keeps_order_skips_blank_lines_and_flags_duplicates():
    data = b"\n".join([line(custom_id="a"), b"", b"  ", b"{bad", line(custom_id="b"), line(custom_id="a"),
                       line(custom_id="a", method="GET")]) + b"\r\n"
    entries = ob.parse_input(data)
    assert [(type(e).__name__, e.custom_id, e.line_no) for e in entries] == [
        ("BatchRequest", "a", 1), ("LineError", None, 4), ("BatchRequest", "b", 5), ("LineError", "a", 6),
        ("LineError", "a", 7)]
    assert entries[3].code == "duplicate_custom_id"
    assert entries[4].code == "duplicate_custom_id"


def test_crlf_lines_parse():
    entries = ob.parse_input(line(custom_id="a") + b"\r\n" + line(custom_id="b") + b"\r\n")
    assert [e.custom_id for e in entries] == ["a", "b"]
    assert all(isinstance(e, BatchRequest) for e in entries)


def test_output_lines_have_the_openai_shape():
    ok = json.loads(ob.dumps_line(ob.success_line("c1", "rid", "m", "héllo", "length", 5, 3, created=10)))
    assert ok["id"].startswith("batch_req_") and ok["custom_id"] == "c1" and ok["error"] is None
    assert ok["response"]["status_code"] == 200 and ok["response"]["request_id"] == "rid"
    body = ok["response"]["body"]
    assert body["object"] == "chat.completion" and body["created"] == 10 and body["model"] == "m"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "héllo"},
                                "logprobs": None, "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    bad = json.loads(ob.dumps_line(ob.error_line(None, "invalid_json_line", "line 2: nope")))
    assert bad["custom_id"] is None and bad["response"] is None
    assert bad["error"] == {"code": "invalid_json_line", "message": "line 2: nope"}


def test_dumps_line_is_one_line_even_with_odd_text():
    text = ob.dumps_line(ob.success_line("c\n\ud800", "r", "m", "a\nb\u2028c", "stop", 1, 1))
    assert "\n" not in text and "\u2028" not in text
    text.encode("ascii")  # a lone surrogate must not make the file unwritable


def test_module_does_not_import_torch():
    code = "import sys, app.chat.batch_file; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ------------------------------------------------------------------ text and numbers the store can hold
SURROGATE_LINES = [  # (line text as written in the file, the field the error must name)
    ('{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": '
     '[{"role": "user", "content": "hi \\ud83d"}]}}', "body.messages[0].content"),
    ('{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": '
     '[{"role": "user", "content": [{"type": "text", "text": "\\udc80"}]}]}}', "body.messages[0].content[0].text"),
    ('{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": '
     '[{"role": "user", "content": "hi"}], "stop": ["ok", "\\ud800"]}}', "body.stop[1]"),
    ('{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": '
     '[{"role": "user", "content": "hi"}], "\\ud800x": 1}}', "body"),
]


@pytest.mark.parametrize("text, field", SURROGATE_LINES)
def test_a_lone_surrogate_fails_only_its_line_naming_the_field(text, field):
    entries = ob.parse_input("\n".join([text, line(custom_id="ok").decode()]).encode())
    err, ok = entries
    assert isinstance(err, LineError) and isinstance(ok, BatchRequest), entries
    assert (err.code, err.custom_id, err.line_no) == ("invalid_value", "x", 1)
    assert err.message.startswith(f"line 1: {field}") and "UTF-8" in err.message
    err.message.encode("utf-8")  # the message itself is storable text


def test_a_lone_surrogate_in_the_custom_id_leaves_no_readable_id():
    err = ob.parse_line(b'{"custom_id": "a\\udfff", "method": "POST", "url": "/v1/chat/completions", '
                        b'"body": {"messages": [{"role": "user", "content": "hi"}]}}', 3)
    assert isinstance(err, LineError) and (err.code, err.custom_id) == ("invalid_value", None)
    assert err.message.startswith("line 3: custom_id") and "UTF-8" in err.message


def test_parse_body_refuses_a_lone_surrogate_naming_the_field():
    with pytest.raises(RequestError) as info:
        parse_body({"messages": [{"role": "system", "content": "ok"}, {"role": "user", "content": "a\ud83d"}]})
    assert info.value.code == "invalid_value"
    assert info.value.message.startswith("body.messages[1].content: ") and "UTF-8" in info.value.message
    assert parse_body({"messages": [{"role": "user", "content": "\U0001f600 is fine"}]})


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_nan_and_infinity_fail_only_their_line(number):
    bad = ('{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": '
           f'[{{"role": "user", "content": "hi"}}], "temperature": {number}}}}}')
    err, ok = ob.parse_input(f"{bad}\n{line(custom_id='ok').decode()}\n".encode())
    assert isinstance(ok, BatchRequest)
    assert isinstance(err, LineError) and (err.code, err.custom_id) == ("invalid_value", "x"), err
    assert err.message.startswith("line 1: body.temperature: ") and "not a finite number" in err.message


def test_parse_body_refuses_a_number_that_is_not_finite():
    with pytest.raises(RequestError) as info:
        parse_body({"messages": MSGS, "stop": ["a"], "temperature": float("nan")})
    assert (info.value.code, info.value.message) == ("invalid_value", "body.temperature: nan is not a finite "
                                                                     "number (JSON has no NaN or Infinity)")


def test_an_integer_too_long_to_read_fails_only_its_line():
    bad = line({"messages": MSGS, "seed": 7}).replace(b'"seed": 7', b'"seed": 1' + b"0" * 5000)
    err, ok = ob.parse_input(bad + b"\n" + line(custom_id="ok"))
    assert isinstance(ok, BatchRequest)
    assert isinstance(err, LineError) and err.code == "invalid_json_line" and "4300 digits" in err.message


def test_json_nested_too_deeply_fails_only_its_line():
    err, ok = ob.parse_input(b"[" * 100_000 + b"\n" + line(custom_id="ok"))
    assert isinstance(ok, BatchRequest)
    assert isinstance(err, LineError) and err.code == "invalid_json_line" and "deep" in err.message
