"""Reading job files: an OpenAI Batch JSONL file (a batch job) or an agent task (YAML or JSON).

`load_job_file(path)` returns `(kind, name, items, spec)`, ready for `Store.create_job`:

- **batch** (`.jsonl`): the `baton batch` input format (`app.chat.batch_file`). Each non-blank line is one item,
  in file order: `{"custom_id", "line_no", "messages", "sampling"}` for a valid line, or
  `{"custom_id", "line_no", "error": {"code", "message"}}` for a malformed one (it fails when the job runs;
  the other lines still run). A file none of whose lines is a valid request is refused (it is not a batch
  file: a job of it could only fail; an upload to `baton serve`, `batch_job_file`, is not, as the Batch API's
  lines fail one by one). Spec: `{"format": "openai_batch"}`.
- **agent** (`.yaml`, `.yml`, or `.json` with `"steps"`): `{"name", "system", "steps": [{"prompt"}, ...],
  "params": {...}}`. One item per step: `{"custom_id": "stepN", "step": N, "prompt": template}`; a prompt
  may use `{previous}` / `{stepN}` (see `app.jobs.templates`). Spec: `{"system", "params"}`, where `params`
  holds the sampling parameters with the chat defaults filled in (temperature 0.7, top_p 1, max_tokens 512).

Another extension is decided by content: a JSON/YAML mapping with `"steps"` is an agent task, lines of JSON
objects a batch file.

Every string must be valid UTF-8 text (no lone surrogate, which JSON's and YAML's `\\ud83d` escapes can
make): in a batch file that line fails alone; in an agent task, the file is refused naming the field. A
name taken from the file name is made readable (bytes that are not UTF-8 become U+FFFD, see `path_text`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from backend import SamplingParams

from ..chat import batch_file
from ..chat.json_values import text_problem, value_problem
from ..chat.settings import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P
from .templates import check_template

BATCH_FORMAT = "openai_batch"
AGENT_FIELDS = ("name", "system", "steps", "params")
PARAM_FIELDS = ("temperature", "top_p", "top_k", "max_tokens", "seed", "stop", "ignore_eos")
AGENT_DEFAULTS: dict[str, Any] = {"temperature": DEFAULT_TEMPERATURE, "top_p": DEFAULT_TOP_P,
                                  "max_tokens": DEFAULT_MAX_TOKENS}

JobFile = tuple[str, str, list[dict[str, Any]], dict[str, Any]]


def load_job_file(path: str | Path, name: str | None = None) -> JobFile:
    """Read and check a job file.

    Args:
        path: the file (`.jsonl` batch; `.yaml`/`.yml`/`.json` agent task; others decided by content).
        name: the job's name; None takes the agent task's `name`, else the file's stem.
    Returns:
        `(kind, name, items, spec)` with kind `"batch"` or `"agent"` (see the module docstring).
    Raises:
        ValueError: `<path>: <what is wrong>` when the file cannot be read, is empty, has no valid request
            line (batch), is not valid JSON/YAML, has no valid structure, or (agent) has a bad field,
            parameter or step prompt, or a string that is not valid UTF-8 text
            (`<path>: steps[0].prompt: not valid UTF-8 text: ...`);
            `name: ...` when `name` is blank or not valid UTF-8 text.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the job file: {exc.strerror or exc}") from None
    if name is not None and not name.strip():
        raise ValueError("name: must not be empty")
    if name is not None and (problem := text_problem(name)) is not None:
        raise ValueError(f"name: {problem}")
    suffix, stem = path.suffix.lower(), path_text(path.stem)
    try:
        if suffix == ".jsonl":
            return _with_a_request(batch_job_file(data, name or stem))
        if suffix in (".yaml", ".yml", ".json"):
            return _agent(_parse_mapping(data, suffix), name, stem)
        return _sniff(data, name, stem)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def path_text(path: str | os.PathLike) -> str:
    """A file path (or name) as valid UTF-8 text, for names and the store: bytes of the name that are not
    UTF-8 (which Python holds as lone surrogates) become U+FFFD."""
    return os.fsencode(path).decode("utf-8", "replace")


def _sniff(data: bytes, name: str | None, stem: str) -> JobFile:
    try:
        obj = _parse_mapping(data, ".yaml")
    except ValueError:
        obj = None
    if isinstance(obj, dict) and "steps" in obj:
        return _agent(obj, name, stem)
    lines = [x for x in data.splitlines() if x.strip()]
    if lines and all(x.lstrip().startswith(b"{") for x in lines):
        return _with_a_request(batch_job_file(data, name or stem))
    raise ValueError("not a job file: use .jsonl for an OpenAI Batch file, .yaml/.yml/.json for an agent "
                     "task with \"steps\"")


def batch_job_file(data: bytes, name: str) -> JobFile:
    """A batch job from an OpenAI Batch file's bytes (read from disk, or uploaded to `baton serve`).

    Returns:
        `(kind, name, items, spec)` as `load_job_file`'s, kind `"batch"`.
    Raises:
        ValueError: `NO_REQUESTS` for a file without a request line (its bad lines are items that fail).
    """
    items: list[dict[str, Any]] = []
    for entry in batch_file.parse_input(data):
        if isinstance(entry, batch_file.LineError):
            items.append({"custom_id": entry.custom_id, "line_no": entry.line_no,
                          "error": {"code": entry.code, "message": entry.message}})
        else:
            items.append({"custom_id": entry.custom_id, "line_no": entry.line_no,
                          "messages": entry.messages, "sampling": entry.sampling})
    if not items:
        raise ValueError(batch_file.NO_REQUESTS)
    return "batch", name, items, {"format": BATCH_FORMAT}


def _with_a_request(job: JobFile) -> JobFile:
    """A batch job file from disk, refused when none of its lines is a valid request (surely not a batch
    file: a job of it could only fail)."""
    items = job[2]
    if all("error" in item for item in items):
        first = " ".join(items[0]["error"]["message"].split())
        raise ValueError(f"no line is a valid request ({len(items)} line{'s' if len(items) > 1 else ''}; "
                         f"{first})")
    return job


def _parse_mapping(data: bytes, suffix: str) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text: {exc}") from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except ValueError as exc:  # not JSON, or an integer of more than 4300 digits
            raise ValueError(f"not valid JSON: {exc}") from None
        except RecursionError:
            raise ValueError("not valid JSON: nested too deeply") from None
    import yaml  # only agent task files need it

    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer of more than 4300 digits
        raise ValueError(f"not valid YAML: {exc}".replace("\n", " ")) from None
    except RecursionError:  # the parser recurses once per level of nesting
        raise ValueError("not valid YAML: nested too deeply") from None


def _agent(obj: Any, name: str | None, stem: str) -> JobFile:
    if not isinstance(obj, dict):
        raise ValueError(f"an agent task must be a mapping with \"steps\", got {type(obj).__name__}")
    problem = value_problem(obj, "")
    if problem is not None:
        raise ValueError(problem)
    if "steps" not in obj:
        raise ValueError("an agent task needs \"steps\" (a batch file must end in .jsonl)")
    unknown = sorted(str(k) for k in set(obj) - set(AGENT_FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} (expected {', '.join(AGENT_FIELDS)})")
    task_name = obj.get("name")
    if task_name is not None and (not isinstance(task_name, str) or not task_name.strip()):
        raise ValueError(f"name: must be a non-empty string, got {task_name!r}")
    system = obj.get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError(f"system: must be a string, got {system!r}")
    items = [_step(i, step) for i, step in enumerate(_steps(obj["steps"]), start=1)]
    spec = {"system": system if system and system.strip() else None, "params": _params(obj.get("params"))}
    return "agent", name or task_name or stem, items, spec


def _steps(steps: Any) -> list[Any]:
    if not isinstance(steps, list) or not steps:
        raise ValueError("steps: must be a non-empty list of {\"prompt\": ...} steps")
    return steps


def _step(number: int, step: Any) -> dict[str, Any]:
    if not isinstance(step, dict) or set(step) != {"prompt"}:
        raise ValueError(f"step {number}: must be a mapping with only a \"prompt\" field, got {step!r}")
    prompt = step["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"step {number}: prompt must be a non-empty string, got {prompt!r}")
    check_template(prompt, number)
    return {"custom_id": f"step{number}", "step": number, "prompt": prompt}


def _params(params: Any) -> dict[str, Any]:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValueError(f"params: must be a mapping, got {type(params).__name__}")
    unknown = sorted(str(k) for k in set(params) - set(PARAM_FIELDS))
    if unknown:
        raise ValueError(f"params: unknown field(s) {', '.join(unknown)} (expected {', '.join(PARAM_FIELDS)})")
    merged = {**AGENT_DEFAULTS, **params}
    try:
        SamplingParams(**merged)
    except ValueError as exc:
        raise ValueError(f"params.{exc}") from None
    return merged
