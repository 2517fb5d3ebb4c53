"""The scheduler alone: `Scheduler.schedule(BatchSnapshot)` plans an iteration without a model or torch.

Every test builds a queue and a snapshot of the running batch, and asserts the exact plan (`SchedulerOutput`
steps). Units: one K/V byte per token (`bytes_per_token=1`) unless said, so budgets read as row-tokens.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from backend.config import Priority, SamplingParams
from backend.request import Request, RequestStatus
from backend.sched_output import DropPrefill, Preempt, PrefillChunk, PrefillGroup, SwapIn
from backend.scheduler import BatchSnapshot, Scheduler

I, A, B = Priority.INTERACTIVE, Priority.AGENT, Priority.BATCH


def _req(rid: str, priority: Priority = B, tokens: int = 10) -> Request:
    return Request(rid, [1] * tokens, SamplingParams(), priority, lambda out: None, None, 100_000)


def _queue(*reqs: Request, max_preemptions: int = 3) -> Scheduler:
    sched = Scheduler(max_preemptions)
    for r in reqs:
        sched.add(r)
    return sched


def _batch(*rows: tuple[Request, int], **kw) -> BatchSnapshot:
    """A snapshot of `rows` ((request, cached tokens), started in this order) and the engine's default budgets."""
    for n, (req, _) in enumerate(rows):
        req.start_seq, req.status = n, RequestStatus.RUNNING
    args = dict(bytes_per_token=1, budget_bytes=None, low_watermark=0.8, high_watermark=0.95, max_batch_size=8,
                max_prefill_tokens=2048, max_background_prefill_tokens=256, next_start_seq=len(rows),
                rows=tuple(r for r, _ in rows), row_lengths=tuple(n for _, n in rows),
                seq_len=max((n for _, n in rows), default=0))
    args.update(kw)
    return BatchSnapshot(**args)


def _swapped(req: Request, length: int, start_seq: int = 0) -> Request:
    """`req` as a preempted row: its `length` tokens of K/V in host memory."""
    req.swapped, req.status, req.start_seq, req.num_preemptions = SimpleNamespace(length=length), \
        RequestStatus.PREEMPTED, start_seq, 1
    return req


def _held(req: Request, prefilled: int) -> Request:
    """`req` between two prefill chunks, holding the K/V of its first `prefilled` prompt tokens."""
    req.num_prefilled, req.prefill_cache, req.status = prefilled, object(), RequestStatus.PREFILLING
    return req


# ------------------------------------------------------------------------------------------ order
def test_newcomers_are_planned_by_priority_in_one_packed_group_per_class():
    b1, a1, i1, i2, b2 = _req("b1", B), _req("a1", A), _req("i1", I), _req("i2", I), _req("b2", B)
    plan = _queue(b1, a1, i1, i2, b2).schedule(_batch())
    assert plan.steps == (PrefillGroup((i1, i2)), PrefillGroup((a1,)), PrefillGroup((b1, b2)))
    assert (plan.num_prefill_tokens, plan.num_rows, plan.seq_len) == (50, 5, 10)


def test_schedule_changes_neither_the_queue_nor_the_requests():
    reqs = [_req("i", I), _swapped(_req("s", B), 30), _held(_req("h", A, 600), 200), _req("b", B)]
    sched = _queue(*reqs)
    before = [(r.request_id, r.status, r.num_prefilled, r.start_seq) for r in sched.waiting()]
    first = sched.schedule(_batch(max_prefill_tokens=300))
    assert first.steps == sched.schedule(_batch(max_prefill_tokens=300)).steps  # the same plan twice
    assert [(r.request_id, r.status, r.num_prefilled, r.start_seq) for r in sched.waiting()] == before
    assert sched.peek() is reqs[0] and len(sched) == 4


def test_swapped_requests_come_back_before_new_work_of_their_class_and_cost_no_prefill_budget():
    new_batch, agent = _req("new", B, 20), _req("agent", A, 20)
    sched = _queue(new_batch, agent)
    old = _swapped(_req("old", B), 300)
    old.seq = 2  # arrived after `new`
    sched.requeue(old)
    plan = sched.schedule(_batch())
    assert plan.steps == (PrefillGroup((agent,)), SwapIn(old), PrefillGroup((new_batch,)))
    assert plan.num_prefill_tokens == 40 and plan.seq_len == 300


def test_a_long_prompt_between_chunks_goes_on_before_new_work_and_joins_after_its_last_chunk():
    new, long = _req("new", B, 10), _held(_req("long", B, 500), 200)
    plan = _queue(new, long).schedule(_batch(max_prefill_tokens=400))
    assert plan.steps == (PrefillChunk(long, 200, 300), PrefillGroup((new,)))
    assert plan.steps[0].last and plan.num_rows == 2 and plan.num_held_prefill_tokens == 0


# --------------------------------------------------------------------------------- token budgets
def test_whole_prompts_are_packed_up_to_the_budget_and_the_next_gets_a_chunk_of_the_rest():
    p1, p2, p3, p4 = _req("p1", B, 100), _req("p2", B, 100), _req("p3", B, 500), _req("p4", B, 10)
    plan = _queue(p1, p2, p3, p4).schedule(_batch(max_prefill_tokens=400))
    assert plan.steps == (PrefillGroup((p1, p2)), PrefillChunk(p3, 0, 200))  # p4 waits: the budget is spent
    assert plan.num_prefill_tokens == 400 and plan.num_held_prefill_tokens == 200 and plan.num_rows == 2


def test_a_chunk_shorter_than_the_min_chunk_waits_for_the_next_iteration():
    p1, p2, p3 = _req("p1", B, 100), _req("p2", B, 100), _req("p3", B, 500)
    plan = _queue(p1, p2, p3).schedule(_batch(max_prefill_tokens=300))  # 100 left < 128
    assert plan.steps == (PrefillGroup((p1, p2)),)
    plan = _queue(p1, p2, p3).schedule(_batch(max_prefill_tokens=300, min_chunk_tokens=100))
    assert plan.steps == (PrefillGroup((p1, p2)), PrefillChunk(p3, 0, 100))


def test_the_first_prefill_of_an_iteration_takes_a_chunk_of_the_whole_budget():
    long, short = _req("long", B, 1000), _req("short", B, 10)
    plan = _queue(long, short).schedule(_batch(max_prefill_tokens=50))  # min chunk capped at the budget
    assert plan.steps == (PrefillChunk(long, 0, 50),)
    assert not plan.steps[0].last and plan.num_rows == 0


def test_background_prompts_get_the_smaller_budget_while_a_chat_is_decoding():
    chat = _req("chat", I, 20)
    b1, b2 = _req("b1", B, 200), _req("b2", B, 200)
    assert _queue(b1, b2).schedule(_batch()).steps == (PrefillGroup((b1, b2)),)  # no chat: 2048 tokens
    plan = _queue(b1, b2).schedule(_batch((chat, 20)))  # 256 tokens: b2 would get 56 < 128
    assert plan.steps == (PrefillGroup((b1,)),)
    big_chat = _req("big", I, 1000)
    assert _queue(big_chat).schedule(_batch((chat, 20))).steps == (PrefillGroup((big_chat,)),)  # a chat: all


def test_a_chat_admitted_in_the_same_plan_shrinks_the_budget_of_background_prompts_after_it():
    chat, bg = _req("chat", I, 10), _req("bg", B, 400)
    plan = _queue(chat, bg).schedule(_batch())
    assert plan.steps == (PrefillGroup((chat,)), PrefillChunk(bg, 0, 246))  # 256 - 10


# ------------------------------------------------------------------------------------- preemption
def test_a_full_batch_preempts_the_lowest_priority_most_recently_started_row_for_a_chat():
    b1, a, b2 = _req("b1", B), _req("a", A), _req("b2", B)
    chat = _req("chat", I)
    plan = _queue(chat).schedule(_batch((b1, 30), (a, 30), (b2, 30), max_batch_size=3))
    assert plan.steps == (Preempt(b2, for_request=chat), PrefillGroup((chat,)))
    assert plan.preempted == (b2,) and plan.num_rows == 3


def test_a_row_preempted_max_preemptions_times_is_not_chosen_again():
    b1, a, b2 = _req("b1", B), _req("a", A), _req("b2", B)
    chat = _req("chat", I)
    b2.num_preemptions = 2
    plan = _queue(chat, max_preemptions=2).schedule(_batch((b1, 30), (a, 30), (b2, 30), max_batch_size=3))
    assert plan.steps == (Preempt(b1, for_request=chat), PrefillGroup((chat,)))
    b1.num_preemptions = a.num_preemptions = 2
    assert _queue(chat, max_preemptions=2).schedule(_batch((b1, 30), (a, 30), (b2, 30), max_batch_size=3)).steps == ()


def test_only_rows_of_strictly_lower_priority_are_preempted():
    rows = [(_req("i", I), 30), (_req("a", A), 30)]
    assert _queue(_req("agent", A)).schedule(_batch(*rows, max_batch_size=2)).steps == ()
    assert _queue(_req("batch", B)).schedule(_batch(*rows, max_batch_size=2)).steps == ()


def test_the_group_admitted_so_far_is_prefilled_before_a_victim_is_chosen():
    bg, i1, i2 = _req("bg", B), _req("i1", I), _req("i2", I)
    plan = _queue(i1, i2).schedule(_batch((bg, 30), max_batch_size=2))
    assert plan.steps == (PrefillGroup((i1,)), Preempt(bg, for_request=i2), PrefillGroup((i2,)))


def test_a_preempted_row_is_queued_as_swapped_ahead_of_new_work_of_its_class():
    bg, chat, later = _req("bg", B, 790), _req("chat", I, 10), _req("later", B, 10)
    plan = _queue(chat, later).schedule(_batch((bg, 790), budget_bytes=1000))  # 2 x 791 > 800: bg goes
    assert plan.steps == (Preempt(bg, for_request=chat), PrefillGroup((chat,)))  # `later` would fit: it waits


# ----------------------------------------------------------------------------------- watermarks
def test_admission_stops_at_the_low_watermark():
    rows = [(_req(f"r{i}", B, 99), 99) for i in range(2)]  # 2 x 100 bytes with the decode column
    new = [_req(f"n{i}", B, 99) for i in range(10)]
    plan = _queue(*new).schedule(_batch(*rows, budget_bytes=1000, max_batch_size=16))
    assert plan.steps == (PrefillGroup(tuple(new[:6])),)  # 8 rows x 100 = 800 = 80% of the budget
    assert plan.num_rows == 8


def test_an_empty_batch_admits_a_prompt_larger_than_the_budget():
    huge = _req("huge", B, 500)
    assert _queue(huge).schedule(_batch(budget_bytes=100)).steps == (PrefillGroup((huge,)),)


def test_rows_are_swapped_out_above_the_high_watermark_lowest_priority_most_recent_first():
    i, a, b1, b2 = _req("i", I), _req("a", A), _req("b1", B), _req("b2", B)
    rows = [(i, 199), (b1, 199), (a, 199), (b2, 199)]
    assert _queue().schedule(_batch(*rows, budget_bytes=1000)).steps == ()  # 800: between the watermarks
    b3 = _req("b3", B)
    plan = _queue().schedule(_batch(*rows, (b3, 199), budget_bytes=1000))  # 1000 > 950
    assert plan.steps == (Preempt(b3, for_request=None),)
    b3.num_preemptions = 3
    plan = _queue().schedule(_batch(*rows, (b3, 199), budget_bytes=1000))
    assert plan.steps == (Preempt(b2, for_request=None),) and plan.num_rows == 4


def test_a_single_row_is_never_swapped_out_for_memory():
    row = _req("row", B)
    assert _queue().schedule(_batch((row, 5000), budget_bytes=1000)).steps == ()


# --------------------------------------------------------------------- K/V held between chunks
def test_a_held_partial_prefill_of_no_higher_priority_is_dropped_before_a_row_is_swapped_out():
    i1, i2 = _req("i1", I), _req("i2", I)
    held = _held(_req("held", B, 500), 400)
    sched = _queue(held)
    plan = sched.schedule(_batch((i1, 299), (i2, 299), budget_bytes=1000, budget_is_fixed=True))  # 600 + 400
    assert plan.steps == (DropPrefill(held),) and plan.num_held_prefill_tokens == 0
    assert held.num_prefilled == 400  # planning changes nothing
    assert sched.schedule(_batch((i1, 299), (i2, 299), budget_bytes=1000)).steps == ()  # budget from free memory
    b1, b2 = _req("b1", B), _req("b2", B)  # rows of its own class: the held K/V go first too
    assert sched.schedule(_batch((b1, 299), (b2, 299), budget_bytes=1000, budget_is_fixed=True)).steps == (
        DropPrefill(held),)


def test_the_lowest_priority_latest_held_prefill_is_dropped_first():
    i1, i2 = _req("i1", I), _req("i2", I)
    h0, h1, h2 = _held(_req("h0", A, 1000), 100), _held(_req("h1", B, 1000), 150), _held(_req("h2", B, 1000), 150)
    plan = _queue(h0, h1, h2).schedule(_batch((i1, 299), (i2, 299), budget_bytes=1000, budget_is_fixed=True))
    assert plan.steps == (DropPrefill(h2),)  # 600 + 400 > 950; 600 + 250 is not


def test_held_prefills_narrow_admission_under_a_fixed_budget():
    chat0, chat = _req("chat0", I, 99), _req("chat", I, 99)
    held = _held(_req("held", B, 1000), 300)  # its next chunk never fits: 3 rows of 1001 tokens
    snapshot = _batch((chat0, 99), budget_bytes=1000, budget_is_fixed=True)
    assert _queue(chat, held).schedule(snapshot).steps == (PrefillGroup((chat,)),)  # 2 x 100 + 300 <= 800
    held.num_prefilled = 700
    assert _queue(chat, held).schedule(snapshot).steps == ()  # 2 x 100 + 700 > 800
    not_fixed = replace(snapshot, budget_is_fixed=False)  # read from free device memory: held K/V already out
    assert _queue(chat, held).schedule(not_fixed).steps == (PrefillGroup((chat,)),)


def test_a_held_prefill_s_own_k_v_do_not_count_against_its_last_chunk():
    row, held = _req("row", B, 99), _held(_req("held", B, 300), 200)
    plan = _queue(held).schedule(_batch((row, 99), budget_bytes=1000, budget_is_fixed=True))
    assert plan.steps == (PrefillChunk(held, 200, 100),)  # 2 x 301 <= 800 (with its own 200 held: 802)
    assert plan.steps[0].last and plan.num_rows == 2 and plan.num_held_prefill_tokens == 0


# ----------------------------------------------------------------------------------- boundaries
def test_a_snapshot_with_a_length_per_row_is_required():
    with pytest.raises(ValueError, match="row_lengths"):
        _batch(rows=(_req("r"),), row_lengths=())


def test_the_scheduler_imports_no_torch():
    code = "import sys, backend.scheduler, backend.sched_plan; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
