"""The interactive latency target (`EngineConfig.interactive_tpot_slo`, `backend/sched_slo.py`).

A known cost model is injected (`FixedCost`: a decode step over B rows costs 1 + B ms, an idealized CPU), so
nothing here depends on timing. First the planner alone (`Scheduler.schedule` on snapshots), then the engine
on `random:tiny`: at every decode step while a chat decodes, the background rows never exceed the cap the
model allows; rows over it are swapped out and resume exactly (greedy tokens equal solo runs); every
background request finishes; with the target off, or with nothing to cap, the plans are those of today.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from types import SimpleNamespace

import pytest

from backend import Priority, SamplingParams
from backend.request import Request, RequestStatus
from backend.row_parking import ParkedRow
from backend.sched_output import Preempt, PrefillChunk, PrefillGroup, SwapIn
from backend.sched_slo import ADMIT_MARGIN, SloAccount
from backend.scheduler import BatchSnapshot, Scheduler
from conftest import queued, solo_greedy

I, A, B = Priority.INTERACTIVE, Priority.AGENT, Priority.BATCH


class FixedCost:
    """A known `StepCost`: a decode step costs `decode(rows, seq_len)` ms (1 + rows unless given), a prefill
    `per_token` ms a token, a copy `per_byte` ms a byte; `ready=False` predicts nothing (a model still
    learning)."""

    def __init__(self, decode=lambda rows, seq_len: 1.0 + rows, per_token=0.0, per_byte=0.0, ready=True):
        self.decode, self.per_token, self.per_byte, self.is_ready = decode, per_token, per_byte, ready

    def decode_ms(self, rows, seq_len):
        return self.decode(rows, seq_len) if self.is_ready else None

    def prefill_ms(self, tokens, forwards=1):
        return self.per_token * tokens

    def copy_ms(self, nbytes):
        return self.per_byte * nbytes

    def observe_decode(self, *args):  # the engine teaches its model; a fixed one does not learn
        pass

    observe_prefill = observe_copy = observe_decode
    coefficients = None


def allowed(multiple: float, interactive: int, cost=lambda rows: 1.0 + rows, max_batch_size: int = 8) -> int:
    """The largest n with cost(interactive + n) <= multiple * cost(interactive): what the target allows."""
    n = 0
    while interactive + n < max_batch_size and cost(interactive + n + 1) <= multiple * cost(interactive):
        n += 1
    return n


# ------------------------------------------------------------------------------------- the planner
def _req(rid: str, priority: Priority = B, tokens: int = 10) -> Request:
    return Request(rid, [1] * tokens, SamplingParams(), priority, lambda out: None, None, 100_000)


def _queue(*reqs: Request) -> Scheduler:
    sched = Scheduler(3)
    for r in reqs:
        sched.add(r)
    return sched


def _batch(*rows: tuple[Request, int], slo: float | None = 2.0, cost=None, **kw) -> BatchSnapshot:
    """A snapshot of `rows` ((request, cached tokens), started in this order), the target and a cost model."""
    for n, (req, _) in enumerate(rows):
        req.start_seq, req.status, req.seq = n, RequestStatus.RUNNING, 1000 + n  # arrived before the queue
    args = dict(bytes_per_token=1, budget_bytes=None, low_watermark=0.8, high_watermark=0.95, max_batch_size=8,
                max_prefill_tokens=2048, max_background_prefill_tokens=256, next_start_seq=len(rows),
                rows=tuple(r for r, _ in rows), row_lengths=tuple(n for _, n in rows),
                seq_len=max((n for _, n in rows), default=0), interactive_tpot_slo=slo,
                step_cost=FixedCost() if cost is None else cost)
    args.update(kw)
    return BatchSnapshot(**args)


def _swapped(req: Request, length: int, start_seq: int) -> Request:
    req.swapped, req.status, req.start_seq = SimpleNamespace(length=length), RequestStatus.PREEMPTED, start_seq
    return req


def test_the_cap_is_the_largest_background_count_within_the_target():
    account = SloAccount(_batch())
    assert account.target_ms(1, 10) == 4.0  # 2 x (1 + 1)
    assert account.cap(1, 10, 10) == allowed(2.0, 1) == 2  # 1 + (1 + 2) = 4 <= 4
    assert account.cap(3, 10, 10) == allowed(2.0, 3) == 4
    assert account.cap(0, 0, 10) == 2  # a chat about to decode counts as one row
    assert account.cap(1, 10, 10, admit=True) == 1  # admission keeps ADMIT_MARGIN of the allowance unused
    assert ADMIT_MARGIN == 0.1
    assert SloAccount(_batch(slo=1.0)).cap(1, 10, 10) == 0
    assert SloAccount(_batch(cost=FixedCost(lambda r, s: 10.0))).cap(1, 10, 10) == 7  # flat: up to the batch
    assert SloAccount(_batch(cost=FixedCost(ready=False))).cap(1, 10, 10) is None
    assert SloAccount(_batch(slo=None)).cap(1, 10, 10) is None


def test_background_rows_over_the_cap_are_swapped_out_most_recent_first_and_not_counted():
    chat, rows = _req("chat", I), [_req(f"b{i}", B) for i in range(5)]
    plan = _queue().schedule(_batch(*[(r, 20) for r in rows], (chat, 12)))
    assert plan.steps == tuple(Preempt(r, None, slo=True) for r in (rows[4], rows[3], rows[2]))
    assert plan.background_cap == 2 and plan.step_target_ms == 4.0 and plan.num_rows == 3
    assert all(r.num_preemptions == 0 for r in rows)  # planning changes nothing; the core does not count them


def test_agent_rows_keep_their_slots_before_batch_rows():
    chat, agents, batch = _req("chat", I), [_req("a0", A), _req("a1", A)], [_req("b0", B), _req("b1", B)]
    plan = _queue().schedule(_batch((agents[0], 5), (batch[0], 5), (agents[1], 5), (batch[1], 5), (chat, 5)))
    assert plan.preempted == (batch[1], batch[0])


def test_a_chat_arriving_at_a_full_batch_gets_a_row_the_target_frees_then_its_first_token_then_the_rest():
    """The row it needs is one the target swaps out anyway (not a counted preemption); the other swap-outs
    come after its prefill, so its first token does not wait for them."""
    rows = [_req(f"b{i}", B) for i in range(8)]
    chat = _req("chat", I)
    plan = _queue(chat).schedule(_batch(*[(r, 20) for r in rows]))
    assert plan.steps[:2] == (Preempt(rows[7], chat, slo=True), PrefillGroup((chat,)))
    assert plan.steps[2:] == tuple(Preempt(r, None, slo=True) for r in reversed(rows[2:7]))
    assert plan.background_cap == 2 and plan.num_rows == 3


def test_background_newcomers_and_swap_ins_wait_while_the_cap_is_full_and_come_back_after_the_chat():
    chat, running = _req("chat", I), _req("run", B)
    old, new = _swapped(_req("old", B), 30, start_seq=5), _req("new", B)
    sched = _queue(new)
    old.seq = 99
    sched.requeue(old)
    plan = sched.schedule(_batch((running, 20), (chat, 12)))
    assert plan.steps == () and plan.slo_held_back  # one background row = the admission cap (1)
    plan = sched.schedule(_batch((running, 20)))  # the chat has finished: everything comes back
    assert plan.steps == (SwapIn(old), PrefillGroup((new,))) and plan.background_cap is None
    plan = sched.schedule(_batch((running, 20), (chat, 12), slo=3.0))  # cap 4, admission cap 3
    assert plan.steps == (SwapIn(old), PrefillGroup((new,))) and plan.background_cap == 4


def test_after_the_chat_its_swapped_rows_come_back_at_once_and_held_back_prompts_run_in_bounded_forwards():
    """When the chat ends, the rows its target swapped out come back in the first iteration (each is one row
    copy, and the core stops between swap-ins for an arriving chat) and the prompts it held back all run in
    that iteration too, but no background forward is predicted past `abort_layers` x the last chat's allowance,
    since a chat arriving waits for the forward in flight up to its next decoder layer. The bound holds at any
    time no chat decodes (before the first chat too); with the target off the prompts share one forward as
    before."""
    chat, running = _req("chat", I), _req("run", B)
    olds = [_swapped(_req(f"old{i}", B), 300, start_seq=5 + i) for i in range(3)]
    new = [_req(f"new{i}", B, 150) for i in range(5)]
    sched = Scheduler(3)
    cost = FixedCost(per_byte=0.01, per_token=0.01)  # target 2 x 2 = 4 ms: allowance 2 ms; a prompt 1.5 ms
    for n, old in enumerate(olds):
        old.seq = 90 + n
        sched.requeue(old)
    for req in new:
        sched.add(req)
    plan = sched.schedule(_batch((running, 20), (chat, 12), cost=cost, abort_layers=2))
    assert plan.steps == () and plan.slo_held_back and plan.forward_ms is None
    plan = sched.schedule(_batch((running, 20), cost=cost, abort_layers=2, max_batch_size=16))  # chat finished
    assert plan.forward_ms == 4.0  # 2 layers x 2 ms; two prompts (3 ms) fit a forward, three (4.5 ms) do not
    assert plan.steps == (*map(SwapIn, olds), PrefillGroup(tuple(new[:2])), PrefillGroup(tuple(new[2:4])),
                          PrefillGroup((new[4],)))
    assert plan.background_cap is None and not plan.slo_held_back
    no_hooks = sched.schedule(_batch((running, 20), cost=cost, max_batch_size=16))  # forwards that cannot stop: one allowance each
    assert no_hooks.forward_ms == 2.0 and PrefillGroup((new[0],)) in no_hooks.steps
    assert sched.schedule(_batch((running, 20), cost=cost, abort_layers=2, slo=None, max_batch_size=16)).steps == \
        (*map(SwapIn, olds), PrefillGroup(tuple(new)))  # target off: as before, and no bound
    first = Scheduler(3)  # before any chat: the allowance of a one-row chat of no context
    for req in new:
        first.add(req)
    plan = first.schedule(_batch((running, 20), cost=cost, abort_layers=2))
    assert plan.forward_ms == 4.0 and len(plan.steps) == 3


def test_between_chats_a_prompt_past_the_forward_bound_is_chunked_and_ends_the_iterations_admissions():
    chat, long, short = _req("chat", I), _req("long", B, 1000), _req("short", B, 100)
    sched = _queue(long, short)
    cost = FixedCost(per_token=0.01)  # bound 2 layers x 2 ms = 4 ms: 400 tokens a forward
    assert sched.schedule(_batch((chat, 12), cost=cost, min_chunk_tokens=16, abort_layers=2)).slo_held_back
    plan = sched.schedule(_batch(cost=cost, min_chunk_tokens=16, abort_layers=2))
    assert plan.steps == (PrefillChunk(long, 0, 400),) and plan.forward_ms == 4.0 and not plan.slo_held_back
    dear = FixedCost(per_token=1.0)  # not even the minimum chunk fits the bound: it goes anyway
    assert sched.schedule(_batch(cost=dear, min_chunk_tokens=16, abort_layers=2)).steps == (PrefillChunk(long, 0, 16),)
    long.num_prefilled = 800  # its last chunk (a chunk runs alone), then the short prompt in a forward of its own
    plan = sched.schedule(_batch(cost=cost, min_chunk_tokens=16, abort_layers=2))
    assert plan.steps == (PrefillChunk(long, 800, 200), PrefillGroup((short,)))


def test_between_the_admission_cap_and_the_cap_nothing_moves():
    chat, rows = _req("chat", I), [_req("b0", B), _req("b1", B)]
    sched = _queue(_req("waiting", B))
    plan = sched.schedule(_batch(*[(r, 20) for r in rows], (chat, 12)))  # 2 rows: the cap, over admission's 1
    assert plan.steps == () and plan.background_cap == 2


def test_background_prefill_is_chunked_to_what_the_target_leaves():
    chat, long = _req("chat", I), _req("long", B, 300)
    cost = FixedCost(per_token=0.01)  # target 4 ms; the step with the new row 3 ms: 1 ms = 100 tokens left
    plan = _queue(long).schedule(_batch((chat, 12), cost=cost, slo=2.0, min_chunk_tokens=16))
    assert plan.steps == (PrefillChunk(long, 0, 100),) and plan.slo_held_back
    plan = _queue(long).schedule(_batch((chat, 12), cost=cost, slo=2.0, max_background_prefill_tokens=50))
    assert plan.steps == (PrefillChunk(long, 0, 50),)  # the token budget still applies
    plan = _queue(long).schedule(_batch(cost=cost, slo=2.0, abort_layers=2))  # no chat: the whole prompt (3 ms
    # within the 4 ms a forward may take between chats)
    assert plan.steps == (PrefillGroup((long,)),)


def test_a_swap_in_too_costly_to_copy_waits_for_the_chat_to_pause():
    chat, old = _req("chat", I), _swapped(_req("old", B), 300, start_seq=0)
    sched = Scheduler(3)
    sched.requeue(old)
    cheap, dear = FixedCost(per_byte=0.01), FixedCost(per_byte=0.011)  # 300 bytes: 3 ms fits the 3 ms left; 3.3 not
    assert sched.schedule(_batch((chat, 12), cost=cheap, slo=3.0)).steps == (SwapIn(old),)
    assert sched.schedule(_batch((chat, 12), cost=dear, slo=3.0)).steps == ()
    assert sched.schedule(_batch(cost=dear, slo=3.0)).steps == (SwapIn(old),)


def test_growing_the_buffers_counts_as_background_work():
    chat, new = _req("chat", I), _req("new", B, 10)
    cost = FixedCost(per_byte=0.1)  # 3 ms left; growing 1 -> 4 rows of a 12-column window: 48 bytes, 4.8 ms
    assert _queue(new).schedule(_batch((chat, 12), cost=cost, slo=3.0, row_capacity=8)).steps == (PrefillGroup((new,)),)
    assert _queue(new).schedule(_batch((chat, 12), cost=cost, slo=3.0, row_capacity=1)).steps == ()


def _random_workload(seed: int):
    import random

    rng = random.Random(seed)
    reqs = [_req(f"r{i}", rng.choice([A, B, B]), rng.randint(5, 400)) for i in range(12)]
    rows = [(reqs[i], rng.randint(5, 300)) for i in range(rng.randint(0, 6))]
    return rows, _queue(*reqs[len(rows):])


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("case", ["no chat", "flat model", "model not ready"])
def test_with_nothing_to_cap_the_plans_are_those_without_a_target(seed, case):
    rows, sched = _random_workload(seed)
    if case != "no chat":
        chat = _req("chat", I, 30)
        rows.append((chat, 30))
    cost = {"no chat": FixedCost(), "flat model": FixedCost(lambda r, s: 10.0),
            "model not ready": FixedCost(ready=False)}[case]
    for budget in (None, 3000):
        on = sched.schedule(_batch(*rows, cost=cost, budget_bytes=budget, max_prefill_tokens=500))
        off = sched.schedule(_batch(*rows, slo=None, step_cost=None, budget_bytes=budget, max_prefill_tokens=500))
        assert on.steps == off.steps and on.num_prefill_tokens == off.num_prefill_tokens
        assert off.background_cap is None and not off.slo_held_back


@pytest.mark.parametrize("seed", range(40))
def test_random_plans_keep_the_cap_and_the_target(seed):
    """Random batches, queues and cost models with a chat: after every plan the background rows are within
    the cap the model allows, only background rows are swapped out for it, and the decode step with them
    plus the background prefill and swap-in work it admitted stays within the target."""
    import random

    rng = random.Random(seed)
    slope, multiple = rng.choice([0.2, 1.0, 3.0]), rng.choice([1.0, 1.3, 2.0, 4.0])
    cost = FixedCost(lambda r, s: 1.0 + slope * r, per_token=rng.choice([0.0, 0.002, 0.01]),
                     per_byte=rng.choice([0.0, 0.001, 0.02]))
    rows, sched = _random_workload(seed)
    if rng.random() < 0.5 or not rows:
        sched.add(_req("chat", I, rng.randint(5, 100)))
    else:
        rows.append((_req("chat", I), rng.randint(5, 100)))
    for n, req in enumerate(sched.waiting()):
        if req.priority != I and rng.random() < 0.3:
            _swapped(req, rng.randint(5, 200), start_seq=100 + n)
    plan = sched.schedule(_batch(*rows, cost=cost, slo=multiple, max_prefill_tokens=500))
    chats = sum(r.priority == I for r, _ in rows) + sum(r.priority == I for r in plan.admitted)
    joined = [r for s in plan.steps if isinstance(s, (SwapIn, PrefillGroup)) or (isinstance(s, PrefillChunk) and s.last)
              for r in s.requests if r.priority != I]
    background = sum(r.priority != I for r, _ in rows) - len(plan.preempted) + len(joined)
    cap = allowed(multiple, max(1, chats), cost=lambda r: 1.0 + slope * r)
    assert plan.background_cap == cap and background <= cap
    assert all(s.request.priority != I for s in plan.steps if isinstance(s, Preempt))
    work = sum(cost.per_token * (s.num_tokens if isinstance(s, PrefillChunk) else sum(r.num_prompt_tokens for r in s.requests))
               for s in plan.steps if isinstance(s, (PrefillGroup, PrefillChunk)) and s.requests[0].priority != I)
    work += sum(cost.per_byte * s.request.swapped.length for s in plan.steps if isinstance(s, SwapIn))
    if work or joined:
        assert cost.decode_ms(max(1, chats) + background, 0) + work <= plan.step_target_ms + 1e-9


@pytest.mark.parametrize("seed", range(30))
def test_random_plans_between_chats_keep_every_background_forward_within_the_bound(seed):
    """Random batches, queues and cost models, the target set and no chat: every background forward is within
    `abort_layers x allowance` (a chunk of `min_chunk_tokens`, or a prompt shorter than that alone in its
    forward, may pass it), and the plan takes as much prompt work as it would with the target off, up to one
    chunk (the bound splits forwards; it does not hold work back)."""
    import random

    rng = random.Random(seed)
    multiple, layers, slope = rng.choice([1.3, 2.0, 4.0]), rng.choice([0, 1, 8, 30]), rng.choice([0.2, 1.0])
    cost = FixedCost(lambda r, s: 1.0 + slope * r, per_token=rng.choice([0.002, 0.01, 0.05]))
    rows, sched = _random_workload(seed)
    sched.last_chat = rng.choice([None, (1, rng.randint(5, 100))])
    kw = dict(cost=cost, max_prefill_tokens=500, min_chunk_tokens=16, max_batch_size=16)
    plan = sched.schedule(_batch(*rows, slo=multiple, abort_layers=layers, **kw))
    b_i, s_i = sched.last_chat or (1, 0)
    bound = max(1, layers) * (multiple - 1) * cost.decode_ms(b_i, s_i)
    assert plan.forward_ms == pytest.approx(bound) and not plan.slo_held_back and plan.background_cap is None
    for s in plan.steps:
        if isinstance(s, PrefillGroup):
            tokens = sum(r.num_prompt_tokens for r in s.requests)
            assert cost.prefill_ms(tokens) <= bound + 1e-9 or (len(s.requests) == 1 and tokens <= 16)
        elif isinstance(s, PrefillChunk):
            assert cost.prefill_ms(s.num_tokens) <= bound + 1e-9 or s.num_tokens <= 16 or s.last
    off = sched.schedule(_batch(*rows, slo=None, **kw))
    assert plan.num_prefill_tokens >= min(off.num_prefill_tokens, 16) and set(plan.admitted) <= set(off.admitted)


# ------------------------------------------------------------------------------------- the engine
def _greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


class StepWatch:
    """Wraps `runner.decode` (as `DecodeGate` does): at every decode step records (interactive rows,
    background rows, the plan's cap); parks the engine once at the first step with `park_at` rows."""

    def __init__(self, engine, park_at: int):
        core = engine._core
        real = core.runner.decode
        self.steps: list[tuple[int, int, int | None]] = []
        self.parked, self.released = threading.Event(), threading.Event()

        def decode(batch, input_ids):
            chats = sum(r.priority == I for r in core.rows)
            self.steps.append((chats, len(core.rows) - chats, core._last_plan.background_cap))
            if not self.parked.is_set() and batch.size == park_at:
                self.parked.set()
                self.released.wait(60)
            return real(batch, input_ids)

        core.runner.decode = decode


async def _run(engine, prompt, n, priority):
    return [o async for o in engine.generate(prompt, _greedy(n), priority=priority)]


@pytest.mark.parametrize("multiple", [1.0, 2.0])
async def test_background_rows_never_exceed_the_cap_while_a_chat_decodes_and_resume_exactly(
        make_engine, tiny, multiple):
    engine = make_engine(max_batch_size=8, interactive_tpot_slo=multiple)
    engine._core.step_cost = FixedCost()
    watch = StepWatch(engine, park_at=6)
    prompts = [f"background job {i}" + "." * i for i in range(6)]
    bg = [asyncio.create_task(_run(engine, p, 40, B if i % 2 else A)) for i, p in enumerate(prompts)]
    assert await asyncio.to_thread(watch.parked.wait, 60)
    chat = asyncio.create_task(_run(engine, "a person asks", 12, I))
    await queued(engine)
    watch.released.set()
    outs = await asyncio.gather(*bg, chat)
    cap = allowed(multiple, 1)
    chatting = [(b, c) for i, b, c in watch.steps if i]
    assert chatting and all(b <= cap and c == cap for b, c in chatting)  # at every step, and as planned
    assert max(b for b, _ in chatting) == cap  # the cap is used, not left empty
    last_chat_step = max(n for n, (i, _, _) in enumerate(watch.steps) if i)
    assert (0, 6, None) in watch.steps[last_chat_step:]  # then the whole batch came back, uncapped
    counters = engine.stats().counters
    assert counters["num_slo_swap_outs"] == 6 - cap and counters.get("num_preemptions", 0) == 0
    assert counters["num_swap_ins"] == counters["num_swap_outs"]
    # on a CPU they were parked in place (`row_parking.py`): no K/V copied out to host memory
    assert counters["num_parks"] == 6 - cap and counters.get("num_swapped_out_bytes", 0) == 0
    assert engine._core.batch.parked == [] and engine._core.swap_space.peak_in_use_bytes == 0
    for prompt, out in zip(prompts, outs):
        assert out[-1].finish_reason == "length"
        assert [o.token_id for o in out if o.token_id is not None] == solo_greedy(tiny, engine.tokenize(prompt), 40)
    assert [o.token_id for o in outs[-1] if o.token_id is not None] == \
        solo_greedy(tiny, engine.tokenize("a person asks"), 12)


async def test_the_stats_show_the_cap_and_the_predicted_step(make_engine, decode_gate):
    engine = make_engine(max_batch_size=8, interactive_tpot_slo=2.0)
    engine._core.step_cost = FixedCost()
    chatting = lambda batch: any(r.priority == I for r in engine._core.rows)  # noqa: E731
    gate = decode_gate(engine, chatting, skip=1)  # the stats of one iteration with the chat are published
    bg = [asyncio.create_task(_run(engine, f"job {i}", 30, B)) for i in range(4)]
    chat = asyncio.create_task(_run(engine, "hello", 10, I))
    await gate.parked()
    stats = engine.stats()
    assert stats.slo_background_cap == 2 and stats.slo_target_step_ms == 4.0
    assert stats.predicted_step_ms == 1.0 + stats.batch_size
    gate.release()
    await asyncio.gather(*bg, chat)
    stats = engine.stats()
    assert stats.slo_background_cap is None and stats.predicted_step_ms is None  # idle


async def test_with_the_target_off_or_nothing_to_cap_every_plan_is_the_plan_without_it(make_engine, tiny):
    """At every iteration of a run with chats and background work, the plan equals the plan of the same
    snapshot without a target (target off; or on with a flat, GPU-like cost model; or a model not ready)."""
    for slo, cost in ((None, None), (1.5, FixedCost(lambda r, s: 10.0)), (1.5, FixedCost(ready=False))):
        engine = make_engine(max_batch_size=4, interactive_tpot_slo=slo, max_prefill_tokens=64)
        core = engine._core
        if cost is not None:
            core.step_cost = cost
        real, differ = core.scheduler.schedule, []

        def schedule(snapshot, real=real, differ=differ):
            plan = real(snapshot)
            if plan.steps != real(replace(snapshot, interactive_tpot_slo=None)).steps:
                differ.append(plan)
            return plan

        core.scheduler.schedule = schedule
        runs = [_run(engine, f"background {i} " * (1 + i), 20, B) for i in range(5)]
        runs += [_run(engine, "chat one", 15, I), _run(engine, "chat two, a bit longer", 15, I)]
        outs = await asyncio.gather(*runs)
        assert differ == [] and all(o[-1].finish_reason == "length" for o in outs)
        assert engine.stats().counters.get("num_slo_swap_outs", 0) == 0


async def test_the_engine_learns_its_step_cost_from_its_own_steps(make_engine):
    engine = make_engine(max_batch_size=8, interactive_tpot_slo=1.5)
    runs = [_run(engine, f"request {i}", 5 + 6 * i, B) for i in range(5)]  # rows finish one by one
    await asyncio.gather(*runs)
    model = engine._core.step_cost
    assert model.ready and all(c >= 0 for c in model.coefficients)  # values are the machine's; not asserted
    assert engine.stats().step_cost_coefficients == model.coefficients


def _parked_requests(engine) -> list[Request]:
    return [r for r in engine._core.scheduler.waiting() if isinstance(r.swapped, ParkedRow)]


async def _background_then_chat(engine, n_rows: int, watch_rows: int):
    """`n_rows` background requests (agent and batch, 40 greedy tokens), then a chat once `watch_rows` decode."""
    watch = StepWatch(engine, park_at=watch_rows)
    prompts = [f"background job {i}" + "." * i for i in range(n_rows)]
    bg = [asyncio.create_task(_run(engine, p, 40, B if i % 2 else A)) for i, p in enumerate(prompts)]
    assert await asyncio.to_thread(watch.parked.wait, 60)
    chat = asyncio.create_task(_run(engine, "a person asks", 12, I))
    await queued(engine)
    watch.released.set()
    return prompts, bg, chat


async def test_a_row_needing_a_parked_rows_buffer_row_moves_it_and_every_row_resumes_exactly(
        make_engine, tiny, decode_gate):
    """A full batch (8 rows: 7 background + a chat, 5 of them parked) and a second chat: the buffer row it needs
    holds a parked row, which moves to a spare buffer row (nothing spilled to host memory); every output equals its
    solo run."""
    engine = make_engine(max_batch_size=8, interactive_tpot_slo=2.0)
    engine._core.step_cost = FixedCost()
    gate = decode_gate(engine, lambda batch: bool(batch.parked))
    prompts, bg, chat = await _background_then_chat(engine, 7, 7)
    await gate.parked()
    assert engine._core.batch.size + len(engine._core.batch.parked) == 8  # as many rows as the batch may decode
    second = asyncio.create_task(_run(engine, "another person", 10, I))
    await queued(engine)
    gate.release()
    outs = await asyncio.gather(*bg, chat, second)
    assert engine._core.batch.num_spills == 0 and engine._core.batch.parked == []
    for prompt, n, out in zip(prompts + ["a person asks", "another person"], [40] * 7 + [12, 10], outs):
        assert [o.token_id for o in out if o.token_id is not None] == solo_greedy(tiny, engine.tokenize(prompt), n)


async def test_a_parked_request_cancelled_frees_its_buffer_row(make_engine, tiny, decode_gate):
    engine = make_engine(max_batch_size=8, interactive_tpot_slo=2.0)
    engine._core.step_cost = FixedCost()
    gate = decode_gate(engine, lambda batch: bool(batch.parked))
    prompts, bg, chat = await _background_then_chat(engine, 6, 6)
    await gate.parked()
    victim = _parked_requests(engine)[0]
    engine.cancel(victim.request_id)
    await queued(engine)
    gate.release()
    outs = await asyncio.gather(*bg, chat)
    assert engine._core.batch.parked == []
    for prompt, out in zip(prompts, outs):
        if out[-1].request_id == victim.request_id:
            assert out[-1].finish_reason == "cancelled"
        else:
            assert [o.token_id for o in out if o.token_id is not None] == solo_greedy(
                tiny, engine.tokenize(prompt), 40)


async def test_a_failed_decode_step_fails_its_rows_and_the_parked_rows_resume_exactly(make_engine, tiny):
    """A decode fault fails the rows of that step (the chat and the background rows decoding beside it); the
    rows parked outside it are spilled to host memory before the batch is rebuilt, and finish exactly."""
    engine = make_engine(max_batch_size=8, interactive_tpot_slo=2.0)
    core = engine._core
    core.step_cost = FixedCost()
    real, parked_ids = core.runner.decode, []

    def decode(batch, input_ids):
        if batch.parked and not parked_ids:
            parked_ids.extend(r.request_id for r in _parked_requests(engine))
            raise RuntimeError("injected decode fault")
        return real(batch, input_ids)

    core.runner.decode = decode
    prompts, bg, chat = await _background_then_chat(engine, 6, 6)
    outs = await asyncio.gather(*bg, chat)
    assert outs[-1][-1].finish_reason == "error" and len(parked_ids) == 6 - allowed(2.0, 1)
    for prompt, out in zip(prompts, outs):
        if out[-1].request_id in parked_ids:
            assert [o.token_id for o in out if o.token_id is not None] == solo_greedy(
                tiny, engine.tokenize(prompt), 40)
        else:
            assert out[-1].finish_reason == "error"


async def test_a_chat_arriving_between_swap_ins_goes_first(make_engine, tiny):
    """Swap-ins are not paced after a chat (each is one row copy): the core checks between them whether an
    interactive request arrived, and if one did the iteration ends there (the rest stay queued, nothing lost)."""
    engine = make_engine(max_batch_size=8, interactive_tpot_slo=2.0)
    core = engine._core
    core.step_cost = FixedCost()
    iteration, swap_ins = [0], []
    real_step, real_swap_in = core.step, core._swap_in

    def step():
        iteration[0] += 1
        real_step()

    def swap_in(req):
        real_swap_in(req)
        swap_ins.append(iteration[0])
        if len(swap_ins) == 1:  # as if a chat had been put in the inbox now
            core.runner.abort.interactive_arrived()

    core.step, core._swap_in = step, swap_in
    prompts, bg, chat = await _background_then_chat(engine, 6, 6)
    outs = await asyncio.gather(*bg, chat)
    parked = 6 - allowed(2.0, 1)
    assert len(swap_ins) == parked and swap_ins.count(swap_ins[0]) == 1  # stopped after the first
    assert len(set(swap_ins[1:])) == 1 and swap_ins[1] > swap_ins[0]  # the others in one later iteration
    assert engine.stats().counters["num_aborted_forwards"] >= 1
    for prompt, out in zip(prompts, outs):
        assert [o.token_id for o in out if o.token_id is not None] == solo_greedy(tiny, engine.tokenize(prompt), 40)


async def test_between_chats_held_prompts_run_in_bounded_forwards_of_one_iteration_and_stay_exact(
        make_engine, tiny, decode_gate):
    """With the target set and no chat decoding, prompts that arrive together are prefilled in one iteration
    but in several forwards, none predicted past `abort_layers x allowance` (a chat arriving waits for one
    decoder layer of the forward in flight, `sched_slo.py`); every output equals its solo run."""
    engine = make_engine(max_batch_size=8, interactive_tpot_slo=2.0)
    core = engine._core
    layers = core.runner.abort_layers
    assert layers == len(tiny.model.model.layers) >= 1
    prompts = [f"background job {i}" + "." * i for i in range(6)]
    lengths = [len(engine.tokenize(p)) for p in prompts]
    bound = layers * (2.0 - 1) * 2.0  # no chat yet: the allowance of a one-row chat, decode_ms(1, 0) = 2 ms
    core.step_cost = FixedCost(per_token=bound / (max(lengths) + 0.5))  # any prompt fits a forward, no two do
    iteration, forwards = [0], []
    real_step, real_group = core.step, core._prefill_group

    def step():
        iteration[0] += 1
        real_step()

    def prefill_group(group, share=True):
        if group and not share:
            forwards.append((iteration[0], len(group)))
        real_group(group, share)

    core.step, core._prefill_group = step, prefill_group
    gate = decode_gate(engine)
    first = asyncio.create_task(_run(engine, prompts[0], 20, B))
    await gate.parked()
    rest = [asyncio.create_task(_run(engine, p, 20, B if i % 2 else A)) for i, p in enumerate(prompts[1:])]
    await queued(engine, 5)
    gate.release()
    outs = await asyncio.gather(first, *rest)
    assert all(n == 1 for _, n in forwards)  # one prompt a forward
    assert max(sum(1 for it, _ in forwards if it == i) for i in set(it for it, _ in forwards)) == 5  # in one iteration
    assert engine.stats().slo_forward_ms == pytest.approx(bound)
    for prompt, out in zip(prompts, outs):
        assert [o.token_id for o in out if o.token_id is not None] == solo_greedy(tiny, engine.tokenize(prompt), 20)
