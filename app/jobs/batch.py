"""Running a batch job's pending items: every one submitted at once at `Priority.BATCH`.

Each item's outcome is committed the moment it is known: `complete_item` with the OpenAI Batch output line
(`app.openai_batch.success_line`) for a request that ran, or `fail_item` with `"<code>: <message>"` (the
OpenAI error code first, see `split_error`) for a malformed line, invalid parameters, a prompt the engine
rejects, or a generation that failed. A request that ends cancelled (the job is pausing or cancelling, or the
engine is shutting down) leaves its item pending, to run again on resume; a cancel the runner did not ask
for stops the whole run (`JobRun.request_stop("interrupted")`), so the job is queued again.
"""

from __future__ import annotations

import re
import uuid

from backend import Priority, SamplingParams
from storage import JobItem, Store

from .. import openai_batch
from .progress import JobRun

_CODE = re.compile(r"([a-z_]+): (.*)", re.DOTALL)


def error_text(code: str, message: str) -> str:
    """The text stored as a failed item's error: `"<code>: <message>"`."""
    return f"{code}: {message}"


def split_error(text: str | None) -> tuple[str, str]:
    """`(code, message)` of a stored item error; text not in `error_text` form gets code `error`."""
    m = _CODE.fullmatch(text or "")
    return (m.group(1), m.group(2)) if m else ("error", text or "no detail")


async def run_item(store: Store, run: JobRun, item: JobItem) -> None:
    """Run one batch item to its end and commit the outcome (unless the job is stopping).

    Raises:
        StorageError: the outcome cannot be committed.
    """
    request = item.request
    line = request.get("line_no", item.idx + 1)
    if "error" in request:
        err = request["error"]
        await _fail(store, run, item, err.get("code", "invalid_request"), err.get("message", "invalid line"))
        return
    try:
        params = SamplingParams(**request.get("sampling", {}))
    except (TypeError, ValueError) as exc:  # the engine's validation, naming the field
        await _fail(store, run, item, "invalid_value", f"line {line}: {exc}")
        return
    if run.stop is not None:
        return
    request_id = uuid.uuid4().hex
    parts: list[str] = []
    last = None
    run.submitted(request_id, item.idx)
    try:
        async for out in run.engine.generate(request["messages"], params, priority=Priority.BATCH,
                                             request_id=request_id):
            parts.append(out.text)
            if out.token_id is not None:
                run.token()
            last = out
    except ValueError as exc:  # the prompt is invalid or longer than the context
        await _fail(store, run, item, "invalid_value", f"line {line}: {exc}")
        return
    finally:
        run.ended(request_id)
    if last.finish_reason in ("stop", "length"):
        result = openai_batch.success_line(item.custom_id, request_id, run.engine.model.name, "".join(parts),
                                           last.finish_reason, last.prompt_tokens, last.completion_tokens)
        run.item_finished(True, await store.complete_item(item.id, result))
    elif last.finish_reason == "cancelled":  # by pause / cancel, or the engine shutting down
        run.request_stop("interrupted")  # no-op when pausing or cancelling; the item stays pending
    else:
        await _fail(store, run, item, "engine_error", f"line {line}: generation failed: {last.error or 'no detail'}")


async def _fail(store: Store, run: JobRun, item: JobItem, code: str, message: str) -> None:
    run.item_finished(False, await store.fail_item(item.id, error_text(code, message)))


def export_line(item: JobItem, job_status: str) -> dict:
    """The OpenAI Batch output line of one item, for `baton jobs export`.

    A done item gives its stored output line; a failed one an error line with its code and message; a
    pending one an error line with code `not_run` (the job is paused, cancelled or not finished).
    """
    if item.status == "done":
        return item.result
    if item.status == "failed":
        return openai_batch.error_line(item.custom_id, *split_error(item.error))
    return openai_batch.error_line(item.custom_id, "not_run",
                                   f"line {item.request.get('line_no', item.idx + 1)}: not run yet "
                                   f"(the job is {job_status})")
