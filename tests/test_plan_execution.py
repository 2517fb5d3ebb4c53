"""The engine core executes a scheduler plan safely: a step whose request failed earlier in the plan is skipped,
and an engine fault fails only the requests its step took from the queue (on `random:tiny`)."""

from __future__ import annotations

import pytest

from backend import EngineConfig, Priority, RequestStatus, SamplingParams
from backend.core import EngineCore
from backend.detokenizer import IncrementalDetokenizer
from backend.request import Request
from backend.sched_output import DropPrefill, Preempt, PrefillChunk, PrefillGroup, SchedulerOutput, SwapIn


def _core(tiny) -> EngineCore:
    return EngineCore(EngineConfig(model=tiny.name, max_prefill_tokens=16), tiny, lambda request_id: None)


def _request(tiny, rid: str, prompt: list[int]) -> Request:
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    return Request(rid, prompt, params, Priority.BATCH, lambda out: None, IncrementalDetokenizer(tiny.tokenizer), 512)


def test_a_step_whose_request_failed_earlier_in_the_plan_is_skipped(tiny):
    core = _core(tiny)
    ok, bad = _request(tiny, "ok", [5, 6, 7]), _request(tiny, "bad", [9, 9, 9, 9])
    for req in (ok, bad):
        core.scheduler.add(req)
    real = core.runner.prefill_packed

    def failing(prompts):
        if [9, 9, 9, 9] in prompts:
            raise RuntimeError("simulated prefill failure")
        return real(prompts)

    core.runner.prefill_packed = failing
    core._execute(SchedulerOutput((PrefillGroup((ok, bad)), Preempt(bad), DropPrefill(bad), SwapIn(bad))))
    assert core.rows == [ok] and core.batch.size == 1 and len(core.scheduler) == 0
    assert bad.status == RequestStatus.FINISHED_ERROR and ok.status == RequestStatus.RUNNING


def test_an_engine_fault_in_a_step_fails_its_requests_and_leaves_later_ones_queued(tiny):
    core = _core(tiny)
    long, later = _request(tiny, "long", list(range(3, 43))), _request(tiny, "later", [5, 6, 7])
    for req in (long, later):
        core.scheduler.add(req)
    core.window.prefill = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("simulated bug"))
    with pytest.raises(RuntimeError, match="simulated bug"):
        core._execute(SchedulerOutput((PrefillChunk(long, 0, 16), PrefillGroup((later,)))))
    assert long.status == RequestStatus.FINISHED_ERROR and "simulated bug" in core._final_outputs[0][1].error
    assert later in core.scheduler and later.status == RequestStatus.WAITING and not core.rows
