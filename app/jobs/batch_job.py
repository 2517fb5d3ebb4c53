"""Running a batch job's pending items: every one submitted at once at `Priority.BATCH`.

Each item runs through `app.chat.run_request` (the same code as `baton batch`), and its outcome is committed
the moment it is known: `complete_item` with the OpenAI Batch output line for a request that ran, or `fail_item` with `"<code>: <message>"` (the
OpenAI error code first, see `split_error`) for a malformed line, invalid parameters, a prompt the engine
rejects, or a generation that failed. A request that ends cancelled (the job is pausing or cancelling, or the
engine is shutting down) leaves its item pending, to run again on resume; a cancel the runner did not ask
for stops the whole run (`JobRun.request_stop("interrupted")`), so the job is queued again.
"""

from __future__ import annotations

import re

from backend import Priority
from storage import JobItem, Store

from ..chat import batch_file
from ..chat.batch_file import BatchRequest
from ..chat.run_request import run_request
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
    """Run one batch item to its end (`app.chat.run_request`) and commit the outcome (unless the job is
    stopping: then the item stays pending).

    Raises:
        StorageError: the outcome cannot be committed.
    """
    request = item.request
    if "error" in request:
        err = request["error"]
        await _fail(store, run, item, err.get("code", "invalid_request"), err.get("message", "invalid line"))
        return
    entry = BatchRequest(request.get("line_no", item.idx + 1), item.custom_id, request["messages"],
                         request.get("sampling", {}))
    line = await run_request(run.engine, entry, Priority.BATCH, may_start=lambda: run.stop is None,
                             on_submit=lambda request_id, params: run.submitted(request_id, item.idx,
                                                                                params.max_tokens),
                             on_token=lambda: run.token(item.idx), on_end=run.ended)
    error = line["error"]
    if error is None:
        run.item_finished(True, await store.complete_item(item.id, line), item.idx)
    elif error["code"] == "cancelled":  # by pause / cancel, or the engine shutting down
        run.request_stop("interrupted")  # no-op when pausing or cancelling; the item stays pending
    else:
        await _fail(store, run, item, error["code"], error["message"])


async def _fail(store: Store, run: JobRun, item: JobItem, code: str, message: str) -> None:
    run.item_finished(False, await store.fail_item(item.id, error_text(code, message)), item.idx)


def export_line(item: JobItem, job_status: str) -> dict:
    """The OpenAI Batch output line of one item, for `baton jobs export`.

    A done item gives its stored output line; a failed one an error line with its code and message; a
    pending one an error line with code `not_run` (the job is paused, cancelled or not finished).
    """
    if item.status == "done":
        return item.result
    if item.status == "failed":
        return batch_file.error_line(item.custom_id, *split_error(item.error))
    return batch_file.error_line(item.custom_id, "not_run",
                                   f"line {item.request.get('line_no', item.idx + 1)}: not run yet "
                                   f"(the job is {job_status})")
