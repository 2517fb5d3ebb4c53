"""Fuzzing every parser of user input (hypothesis): batch lines and files, chat-completion bodies, agent task
and batch job files, CLI sizes.

Property: each input gives either the documented error (`LineError`, `RequestError`, `ValueError`,
`argparse.ArgumentTypeError`) or a valid request whose strings are all valid UTF-8 and whose numbers are all
finite (so the engine can tokenize it and the store can keep it as JSON); never another exception.
Inputs mix valid shapes with lone surrogates, NaN / Infinity, wrong types, stray fields and raw bytes.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.chat.batch_file import BatchRequest, LineError, parse_input, parse_line
from app.chat.completions import ROLES, ChatRequest, RequestError, parse_body
from app.cli.engine_options import parse_size
from app.jobs.files import PARAM_FIELDS, load_job_file

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Text, half of it with lone surrogates mixed in (`st.text()` never makes one, whatever its alphabet).
CHARS = st.one_of(st.characters(), st.sampled_from(["\ud83d", "\udc80", "\udfff", "\ud800"]))
TEXT = st.one_of(st.text(max_size=12), st.lists(CHARS, max_size=12).map("".join))
WORDS = st.one_of(TEXT, st.sampled_from(["hi", "", " ", "{previous}", "{step1}", "a}b", "{{x}}"]))
NUMBERS = st.one_of(st.integers(), st.integers(-(2 ** 70), 2 ** 70),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, 0.5, 7, -1]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, WORDS)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(WORDS, inner, max_size=3)), max_leaves=8)

CONTENT = st.one_of(WORDS, st.lists(st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": WORDS}),
                                              JSON), max_size=3), JSON)
MESSAGE = st.one_of(st.fixed_dictionaries({"role": st.sampled_from(sorted(ROLES)), "content": CONTENT}),
                    st.fixed_dictionaries({"role": WORDS, "content": CONTENT}), JSON)
SAMPLING_FIELDS = ["max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "stop",
                   "ignore_eos", "model", "user", "n", "stream", "logprobs", "response_format", "tools"]


def with_some(base: st.SearchStrategy, fields: list[str], values: st.SearchStrategy) -> st.SearchStrategy:
    """`base` (a dict) plus at most two of `fields` (most generated dicts stay close to valid)."""
    return st.builds(lambda d, extra: {**d, **extra}, base, st.dictionaries(st.sampled_from(fields), values,
                                                                              max_size=2))


BODY = st.one_of(with_some(st.fixed_dictionaries({"messages": st.lists(MESSAGE, min_size=1, max_size=3)}),
                           SAMPLING_FIELDS, st.one_of(SCALARS, st.lists(WORDS, max_size=3), JSON)), JSON)
LINE = st.one_of(
    with_some(st.fixed_dictionaries({"custom_id": WORDS, "method": st.just("POST"),
                                     "url": st.just("/v1/chat/completions"), "body": BODY}),
              ["custom_id", "method", "url", "body", "extra"], JSON),
    st.fixed_dictionaries({}, optional={"custom_id": JSON, "method": JSON, "url": JSON, "body": BODY}))
# A line as a file holds it: ASCII JSON (surrogates as \u escapes, NaN / Infinity as Python writes them),
# UTF-8 JSON (a surrogate then makes bytes that are not UTF-8), or any bytes at all.
LINE_BYTES = st.one_of(
    LINE.map(lambda obj: json.dumps(obj).encode()),
    LINE.map(lambda obj: json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
    st.sampled_from([b"[" * 5000, b"1" * 5000, b"NaN", b'{"custom_id": "a"', b"\xff\xfe"]))


def assert_storable(value) -> None:
    """What the engine and the store need: JSON without NaN / Infinity, every string valid UTF-8."""
    json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")


def assert_line_result(entry, line_no: int) -> None:
    assert isinstance(entry, (BatchRequest, LineError)) and entry.line_no == line_no
    assert entry.custom_id is None or entry.custom_id.encode("utf-8")
    if isinstance(entry, LineError):
        assert entry.message.startswith(f"line {line_no}: ") and entry.message.encode("utf-8")
    else:
        assert all(isinstance(m["content"], str) and m["role"] in ROLES.values() for m in entry.messages)
        assert_storable([entry.custom_id, entry.messages, entry.sampling])


@FUZZ
@given(raw=LINE_BYTES, line_no=st.integers(1, 10**6))
def test_fuzz_batch_line(raw, line_no):
    assert_line_result(parse_line(raw, line_no), line_no)


@FUZZ
@given(lines=st.lists(st.one_of(LINE_BYTES, st.sampled_from([b"", b"  ", b"\r"])), max_size=5))
def test_fuzz_batch_file(lines):
    entries = parse_input(b"\n".join(lines))
    assert [e.line_no for e in entries] == sorted({e.line_no for e in entries})
    for entry in entries:
        assert_line_result(entry, entry.line_no)


@FUZZ
@given(body=BODY)
def test_fuzz_chat_completions_body(body):
    try:
        request = parse_body(body)
    except RequestError as exc:
        assert exc.code and exc.message.encode("utf-8")
        return
    assert isinstance(request, ChatRequest)
    assert_storable([request.messages, request.sampling])


AGENT = with_some(st.fixed_dictionaries({"steps": st.lists(st.fixed_dictionaries({"prompt": WORDS}), min_size=1,
                                                          max_size=3)}),
                  ["name", "system", "params", "steps", "colour"],
                  st.one_of(WORDS, JSON, st.dictionaries(st.sampled_from(PARAM_FIELDS), SCALARS, max_size=3)))


def _yaml(obj) -> bytes:
    try:
        return yaml.safe_dump(obj, allow_unicode=True).encode("utf-8", "surrogatepass")
    except (yaml.YAMLError, UnicodeEncodeError):  # PyYAML cannot write every string: JSON is YAML too
        return json.dumps(obj).encode()


JOB_FILE = st.one_of(
    st.tuples(st.sampled_from([".json", ".yaml", ".yml", ".txt"]), AGENT.map(lambda o: json.dumps(o).encode())),
    st.tuples(st.sampled_from([".yaml", ".yml", ".conf"]), AGENT.map(_yaml)),
    st.tuples(st.sampled_from([".jsonl", ".txt"]),
              st.lists(LINE_BYTES, min_size=0, max_size=4).map(lambda lines: b"\n".join(lines))),
    st.tuples(st.sampled_from([".jsonl", ".yaml", ".json", ".txt"]),
              st.one_of(st.binary(max_size=60), TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
                        st.sampled_from([b"a: &a [1]\nb: [*a, *a]\nsteps: [*a]\n", b"!!python/object:os.system {}",
                                         b"steps: [{prompt: .nan}]\nparams: {temperature: .inf}\n"]))))


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz_jobs")


@FUZZ
@given(job=JOB_FILE, name=st.one_of(st.none(), WORDS))
def test_fuzz_job_file(job_dir, job, name):
    suffix, data = job
    path = job_dir / f"job{suffix}"
    path.write_bytes(data)
    try:
        kind, job_name, items, spec = load_job_file(path, name)
    except ValueError as exc:
        assert str(exc).encode("utf-8", "backslashreplace")  # shown on stderr, one line
        assert "\n" not in str(exc)
        return
    assert kind in ("batch", "agent") and job_name.strip() and items
    assert_storable([job_name, items, spec])


@FUZZ
@given(text=st.one_of(
    TEXT, st.text(), st.from_regex(r"\A\s*[0-9]{1,20}(\.[0-9]{0,20})?\s*(|b|kb|MB|gib|TiB|xb)\s*\Z"),
    st.tuples(st.integers(0, 10**400), st.sampled_from(["", ".5", "."]), st.sampled_from(["", "b", "GiB", "tb"]))
    .map(lambda t: f"{t[0]}{t[1]}{t[2]}")))
def test_fuzz_cli_size(text):
    try:
        size = parse_size(text)
    except argparse.ArgumentTypeError as exc:
        assert str(exc).startswith("must be a positive size")
        return
    assert isinstance(size, int) and 1 <= size and math.isfinite(size)
