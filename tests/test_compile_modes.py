"""Compiled decode steps (`EngineConfig.compile`, `backend/decode_compile.py`, `backend/static_step.py`).

The static step (row buckets, the buffers' whole width, static inputs) is what `inductor` compiles and
`cuda-graphs` captures; run eagerly (`static-eager`, a runner-only mode) it is the CPU test of the CUDA-graph
path's inputs: greedy outputs equal solo `generate` while rows join and leave (buckets 1 -> 2 -> 4 -> 8 -> fewer)
and the buffers are reallocated, and seeded sampled requests draw the same tokens as alone. One small inductor
compile checks the compiled mode end to end. No timing.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from backend import Engine, EngineConfig, Priority, SamplingParams
from backend.decode_compile import STATIC_EAGER, StaticDecoder, resolve_mode
from backend.static_step import row_bucket
from conftest import solo_greedy, use_static_step


def _static(engine: Engine) -> Engine:
    """Switch an idle engine to the static step run eagerly (no compile)."""
    return use_static_step(engine)


def _spy_steps(engine: Engine) -> list[tuple[int, int, int, int]]:
    """Record (rows, bucket, buffer allocation, buffer width) at every static decode step."""
    static, seen = engine._core.runner.static, []
    real = static.decode

    def decode(batch, input_ids):
        out = real(batch, input_ids)
        seen.append((batch.size, row_bucket(batch.size, batch.max_batch_size), batch.allocation, batch.cap_seq))
        return out

    static.decode = decode
    return seen


async def _staggered(engine, prompts, params, after_tokens: int):
    """Submit prompt i once request i-1 has streamed `after_tokens` tokens; the token ids of each."""
    started = [asyncio.Event() for _ in prompts]
    started[0].set()

    async def run(i):
        await started[i].wait()
        ids = []
        async for out in engine.generate(prompts[i], params[i], priority=Priority.BATCH):
            if out.token_id is not None:
                ids.append(out.token_id)
            if len(ids) >= after_tokens and i + 1 < len(prompts):
                started[i + 1].set()
        if i + 1 < len(prompts):
            started[i + 1].set()
        return ids

    return await asyncio.gather(*(run(i) for i in range(len(prompts))))


class ReplayByRunning:
    """A CPU stand-in for `CudaGraphs`: "replay" runs the captured step again on the very tensors it was captured
    on (what a CUDA graph reads and writes: the same addresses) into the same output tensor, so the in-place
    refills of the static inputs, the captures again after a relayout and the output copy are checked without a
    GPU."""

    def __init__(self):
        self.captures: list[int] = []  # the bucket of each capture

    def capture(self, fn):
        out = fn()  # the warm-up writes the step's column, which the replay writes again
        self.captures.append(out.shape[0])

        def replay():
            out.copy_(fn())
            return out

        return replay


@pytest.mark.parametrize("path", ["static-eager", "cuda-graphs-replayed-on-cpu"])
async def test_static_step_greedy_equals_solo_as_rows_join_and_leave_across_relayouts(make_engine, tiny, path):
    """Rows join one by one (1, 2, 3, 4, 5, 6 rows: buckets 1, 2, 4, 8) and leave at different lengths; a
    300-token newcomer and the fifth row make the buffers reallocate (wider, more rows) mid-request."""
    engine = _static(make_engine(max_batch_size=8, prefix_cache_bytes=0))
    if path != "static-eager":
        graphs = ReplayByRunning()
        engine._core.runner.static = StaticDecoder(tiny.model, "cuda-graphs", engine._core.runner.abort,
                                                   graphs=graphs)
    seen = _spy_steps(engine)
    lengths = [20, 5, 40, 12, 300, 8]
    prompts = [[3 + (7 * i + 11 * r) % 250 for i in range(n)] for r, n in enumerate(lengths)]
    max_tokens = [60, 30, 40, 25, 20, 10]
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in max_tokens]
    got = await _staggered(engine, prompts, params, after_tokens=2)
    for r, (p, n) in enumerate(zip(prompts, max_tokens)):
        assert got[r] == solo_greedy(tiny, p, n), f"request {r} diverged"
    rows = [s[0] for s in seen]
    assert {1, 2, 3, 5} <= set(rows) and {1, 2, 4, 8} <= {s[1] for s in seen}
    peak = rows.index(max(rows))
    assert min(rows[peak:]) < max(rows)  # rows left: the bucket came down again
    live_allocations = {s[2] for s in seen}
    assert len(live_allocations) >= 2 and max(s[3] for s in seen) > min(s[3] for s in seen)
    assert engine._core.runner.static.num_window_steps == 0
    if path != "static-eager":  # one capture per bucket and allocation of the buffers, replayed otherwise
        assert len(graphs.captures) == len({(s[1], s[2]) for s in seen}) < len(seen)


def test_static_step_seeded_sampling_draws_as_alone(make_engine, tiny):
    """Seeded sampled rows beside greedy ones in a padded bucket (3 rows -> 4) draw the tokens they draw alone
    on the window path."""
    seeded = [SamplingParams(max_tokens=16, temperature=0.9, top_p=0.95, seed=1234, ignore_eos=True),
              SamplingParams(max_tokens=24, temperature=1.0, seed=7, ignore_eos=True)]
    prompts = [list(range(5, 30)), list(range(40, 48))]
    alone_engine = make_engine(max_batch_size=4, prefix_cache_bytes=0)
    assert alone_engine._core.runner.decode_mode == "off"
    alone = [alone_engine.generate_batch([p], s)[0].token_ids for p, s in zip(prompts, seeded)]
    engine = _static(make_engine(max_batch_size=4, prefix_cache_bytes=0))
    greedy = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    results = engine.generate_batch([prompts[0], [9, 8, 7], prompts[1]], [seeded[0], greedy, seeded[1]])
    assert [results[0].token_ids, results[2].token_ids] == alone
    assert results[1].token_ids == solo_greedy(tiny, [9, 8, 7], 20)
    assert engine._core.runner.static.num_static_steps > 0


def test_inductor_mode_compiles_in_the_background_and_matches_eager(make_engine, tiny):
    """`compile="inductor"`: the first answer is served on the window path while its bucket compiles in the
    background; once compiled, steps run the compiled graph, with the eager engine's and solo outputs."""
    from torch._dynamo.utils import counters

    prompt = list(range(10, 40))
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    expected = solo_greedy(tiny, prompt, 12)
    eager = make_engine(max_batch_size=2, prefix_cache_bytes=0).generate_batch([prompt], params)[0].token_ids
    engine = make_engine(max_batch_size=2, prefix_cache_bytes=0, compile="inductor")
    static = engine._core.runner.static
    assert engine._core.runner.decode_mode == "inductor"
    first = engine.generate_batch([prompt], params)[0]
    assert first.token_ids == expected == eager and first.finish_reason == "length"
    assert static.num_window_steps > 0  # the first steps did not wait for the compile
    assert static.wait_compiled(timeout=300) and static.compile_errors == {}
    assert list(static.compile_seconds) == [(1, 256)]  # one bucket: 1 row, the buffers' 256 columns
    window_steps, graphs = static.num_window_steps, counters["stats"]["unique_graphs"]
    again = engine.generate_batch([prompt], params)[0]
    assert again.token_ids == expected
    assert static.num_static_steps == 11 and static.num_window_steps == window_steps  # all compiled steps
    assert counters["stats"]["unique_graphs"] == graphs  # the background compile's graph: nothing compiled again


def test_static_step_logits_equal_the_window_steps_after_an_insert_into_a_padding_row(tiny):
    """Three rows run as a bucket of 4: the padding row writes its K/V into buffer row 3 at every step; a
    fourth row inserted there later still gets the window path's logits (within 1e-4), and so does every row."""
    from backend.batch import RowKV
    from backend.runner import ModelRunner

    window, static = ModelRunner(tiny.model, tiny.device), ModelRunner(tiny.model, tiny.device, compile=STATIC_EAGER)
    try:
        batches = [window.new_batch(4), static.new_batch(4)]
        prompts = [list(range(5, 22)), [7, 9], list(range(30, 39)), list(range(50, 80))]
        with torch.inference_mode():
            kvs = [window.prefill(p)[1] for p in prompts]
            last = [[p[-1]] for p in prompts]
            for batch in batches:
                for kv in kvs[:3]:
                    batch.insert(RowKV(kv.keys, kv.values, kv.length))
            for step in range(8):
                if step == 4:  # buffer row 3 has held the padding row's K/V for four steps
                    for batch in batches:
                        batch.insert(RowKV(kvs[3].keys, kvs[3].values, kvs[3].length))
                ids = torch.tensor(last[:batches[0].size])
                a, b = window.decode(batches[0], ids), static.decode(batches[1], ids)
                assert a.shape == b.shape and (a - b).abs().max().item() < 1e-4, f"step {step}"
                last = [[t] for t in a.argmax(-1).tolist()] + last[batches[0].size:]
            assert batches[0].lengths == batches[1].lengths and static.static.num_static_steps == 8
            assert static.static.num_window_steps == 0 and batches[1].cap_batch == 4
            assert all(torch.isfinite(t).all() for t in (*batches[1].k, *batches[1].v))  # padding stays finite
    finally:
        window.close()
        static.close()


# ------------------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize("mode", ["fast", "cudagraphs", "static-eager", "", None])
def test_an_unknown_compile_mode_is_refused_naming_the_field(mode):
    with pytest.raises(ValueError, match=r"^compile: must be one of auto, off, inductor, cuda-graphs"):
        EngineConfig(compile=mode)


def test_cuda_graphs_without_a_cuda_device_is_a_clear_error(make_engine):
    with pytest.raises(ValueError, match=r"^compile: 'cuda-graphs' needs a CUDA device, but device is 'cpu'"):
        EngineConfig(device="cpu", compile="cuda-graphs")
    with pytest.raises(ValueError, match=r"^compile: 'cuda-graphs' needs a CUDA device, but the model is on cpu"):
        make_engine(compile="cuda-graphs")  # device "auto", the model loaded on the CPU: refused at start
    with pytest.raises(ValueError, match=r"^compile: 'inductor' needs attn_implementation 'sdpa'"):
        EngineConfig(compile="inductor", attn_implementation="eager")
    assert resolve_mode("auto", torch.device("cpu"), sdpa=True) == "off"
    assert resolve_mode("auto", torch.device("cuda"), sdpa=True) == "cuda-graphs"
    assert resolve_mode("auto", torch.device("cuda"), sdpa=False) == "off"


def test_auto_is_off_on_the_cpu(make_engine):
    engine = make_engine()
    assert EngineConfig().compile == "auto"
    assert engine._core.runner.decode_mode == "off" and engine._core.runner.static is None
    assert engine._core.batch.width_quantum == 1  # the window path's buffers are not rounded


def test_row_buckets_are_powers_of_two_up_to_the_batch_size():
    assert [row_bucket(b, 32) for b in (1, 2, 3, 4, 5, 8, 9, 17, 32)] == [1, 2, 4, 4, 8, 8, 16, 32, 32]
    assert [row_bucket(b, 3) for b in (1, 2, 3)] == [1, 2, 3]  # a batch size that is no power of two
