"""Running an agent task: its steps in order at `Priority.AGENT`, the transcript kept as a chat.

Each step sends the conversation so far (the system prompt, then every earlier step's user prompt and
answer) plus its own prompt, rendered with `{previous}` / `{stepN}` (`app.jobs.templates`). The transcript
chat (titled `agent: <name>`, created at submission, its id in the job's spec as `chat_id`) gets a system
message, then per step the user message when the step starts and the assistant message from its first token
(`app.chat.recorder.AnswerRecorder`, as a TUI chat's answer: flushed while it streams, finished with its
stats), so a person can watch it in the TUI. A step's result (`complete_item`) is committed when it finishes: `{"prompt", "text", "finish_reason",
"prompt_tokens", "completion_tokens", "chat_id", "user_message_id", "assistant_message_id"}`.

Resuming after a pause or a crash re-runs the first pending step: the chat is first cut back to the system
message and the finished steps' turns (what an interrupted step left in it is deleted), so no turn appears
twice. A step that fails (a placeholder it cannot fill, a prompt the engine rejects, a failed generation)
fails the task: the later steps fail as skipped and the job ends `failed`.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from backend import Priority, SamplingParams
from storage import Job, JobItem, Store

from ..chat.answer import is_complete
from ..chat.recorder import AnswerRecorder
from . import templates
from .progress import JobRun

if TYPE_CHECKING:
    from backend import TokenOutput
CHAT_TITLE = "agent: {name}"


async def create_agent_chat(store: Store, name: str, spec: dict[str, Any]) -> int:
    """Create an agent task's transcript chat (with its system message); returns the chat id.

    Raises:
        StorageError.
    """
    system = spec.get("system")
    chat = await store.create_chat(CHAT_TITLE.format(name=name), system, spec.get("params") or {})
    if system:
        await store.add_message(chat.id, "system", system)
    return chat.id


async def run_steps(store: Store, run: JobRun) -> str | None:
    """Run the task's pending steps in order.

    Returns:
        `"done"` when every step is done, `"failed"` when one failed, None when the run was stopped
        (pause, cancel, engine shut down) with steps left pending.
    Raises:
        StorageError: the store fails.
    """
    job = run.job
    items = await store.list_items(job.id)
    chat_id = await _transcript_chat(store, job, items)
    system = job.spec.get("system")
    history = [{"role": "system", "content": system}] if system else []
    outputs: list[str] = []
    for item in items:
        if item.status == "done":
            outputs.append(item.result["text"])
            history += [{"role": "user", "content": item.result["prompt"]},
                        {"role": "assistant", "content": item.result["text"]}]
            continue
        if item.status == "failed":
            await _skip_rest(store, run, items, item.idx + 1)
            return "failed"
        if run.stop is not None:
            return None
        await _cut_transcript(store, chat_id, len(history))
        ok = await _run_step(store, run, item, chat_id, history, outputs)
        if ok is None:
            return None
        if not ok:
            await _skip_rest(store, run, items, item.idx + 1)
            return "failed"
        refreshed = (await store.list_items(job.id))[item.idx]
        outputs.append(refreshed.result["text"])
        history += [{"role": "user", "content": refreshed.result["prompt"]},
                    {"role": "assistant", "content": refreshed.result["text"]}]
    return "done"


async def _transcript_chat(store: Store, job: Job, items: list[JobItem]) -> int:
    """The task's chat; a new one (with the finished steps' turns replayed) if it is missing or was deleted."""
    done = [i for i in items if i.status == "done"]
    candidates = [job.spec.get("chat_id")] + [i.result.get("chat_id") for i in reversed(done)]
    for chat_id in candidates:
        if isinstance(chat_id, int) and await store.get_chat(chat_id) is not None:
            return chat_id
    chat_id = await create_agent_chat(store, job.name, job.spec)
    for item in done:
        await store.add_message(chat_id, "user", item.result["prompt"])
        await store.add_message(chat_id, "assistant", item.result["text"])
    return chat_id


async def _cut_transcript(store: Store, chat_id: int, keep: int) -> None:
    """Delete the chat's messages after the first `keep` (an interrupted step's leftovers)."""
    messages = await store.list_messages(chat_id)
    if len(messages) > keep:
        await store.delete_messages_after(chat_id, messages[keep - 1].id if keep else 0)


async def _run_step(store: Store, run: JobRun, item: JobItem, chat_id: int, history: list[dict[str, str]],
                    outputs: list[str]) -> bool | None:
    """Run one step. Returns True (done), False (failed) or None (stopped; the step stays pending)."""
    step = item.request.get("step", item.idx + 1)
    try:
        prompt = templates.render(item.request["prompt"], step, outputs)
        params = SamplingParams(**run.job.spec.get("params", {}))
    except (TypeError, ValueError) as exc:
        return await _fail(store, run, item, str(exc))
    user = await store.add_message(chat_id, "user", prompt)
    try:
        last, text, message_id = await _stream(store, run, chat_id, user.id,
                                               history + [{"role": "user", "content": prompt}], params, item.idx)
    except ValueError as exc:  # the engine rejected the prompt (e.g. longer than the context)
        return await _fail(store, run, item, f"step {step}: {exc}")
    if is_complete(last.finish_reason):
        result = {"prompt": prompt, "text": text, "finish_reason": last.finish_reason,
                  "prompt_tokens": last.prompt_tokens, "completion_tokens": last.completion_tokens,
                  "chat_id": chat_id, "user_message_id": user.id, "assistant_message_id": message_id}
        run.item_finished(True, await store.complete_item(item.id, result), item.idx)
        return True
    if last.finish_reason == "cancelled":  # by pause / cancel, or the engine shutting down: stays pending
        run.request_stop("interrupted")
        return None
    return await _fail(store, run, item, f"step {step}: generation failed: {last.error or 'no detail'}")


async def _stream(store: Store, run: JobRun, chat_id: int, parent_id: int, messages: list[dict[str, str]],
                  params: SamplingParams, idx: int = 0) -> tuple[TokenOutput, str, int | None]:
    """Generate one answer at AGENT priority into an assistant message of the chat (`AnswerRecorder`: created at
    the first token, flushed, finished with its stats). Returns (last output, text, message id or None).

    Raises:
        ValueError: the engine rejected the prompt. StorageError.
    """
    request_id, last = uuid.uuid4().hex, None
    recorder = AnswerRecorder(store, chat_id, parent_id, run.engine.model.name)
    run.submitted(request_id, idx, params.max_tokens)
    try:
        async for out in run.engine.generate(messages, params, priority=Priority.AGENT, request_id=request_id):
            last = out
            if out.token_id is not None:
                run.token(idx)
            await recorder.take(out)
    finally:
        run.ended(request_id)
    await recorder.finish()
    return last, recorder.text, recorder.message_id


async def _fail(store: Store, run: JobRun, item: JobItem, error: str) -> bool:
    run.item_finished(False, await store.fail_item(item.id, error), item.idx)
    return False


async def _skip_rest(store: Store, run: JobRun, items: list[JobItem], start: int) -> None:
    for item in items[start:]:
        if item.status == "pending":
            await _fail(store, run, item, f"skipped: step {start} failed")
