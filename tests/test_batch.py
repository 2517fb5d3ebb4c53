"""The running batch against solo forwards: random insert / decode / remove / swap schedules (hypothesis)."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import backend.batch
from backend import attention
from backend.batch import RowKV
from backend.runner import ModelRunner


def _solo_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


ops = st.lists(st.tuples(st.sampled_from(["insert", "insert_packed", "step", "step", "remove", "remove_many",
                                          "swap", "park", "unpark", "unpark", "spill"]),
                         st.integers(0, 10_000)),
               min_size=4, max_size=24)


class _NaNTorch:
    """`torch` as `backend.batch` sees it, except that `empty` returns NaN-filled tensors: the batch allocates its
    buffers uninitialised, and any cell read before it is written would turn a row's logits into NaN."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*shape, **kwargs):
        return torch.full(*shape, float("nan"), **kwargs) if len(shape) == 1 else torch.full(shape, float("nan"),
                                                                                              **kwargs)


@pytest.fixture(params=["uninitialised", "nan-filled"])
def buffers(request, monkeypatch):
    if request.param == "nan-filled":
        monkeypatch.setattr(backend.batch, "torch", _NaNTorch())
    return request.param


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedule=ops)
def test_random_schedules_match_solo_forwards(tiny, attention_mode, buffers, schedule):
    """Every row's decode logits equal a solo forward over its own tokens (max |diff| < 1e-4, fp32), also when
    every buffer cell starts as NaN (no cell is read before it is written)."""
    runner = ModelRunner(tiny.model, tiny.device)
    batch = runner.new_batch(max_batch_size=5)
    vocab = tiny.model.config.vocab_size
    rows: list[list[int]] = []  # row i's tokens (prompt + fed tokens), mirrors the batch's row order
    parked: list[tuple[object, list[int]]] = []  # parked rows (`row_parking.py`) and their tokens
    with torch.inference_mode():
        for op, n in schedule:
            rng = random.Random(n)
            if op == "insert" and batch.size < 5:
                prompt = [rng.randrange(3, vocab) for _ in range(1 + (n % 40) * (1 + n % 3) ** 2)]
                logits, kv = runner.prefill(prompt)
                assert (logits - _solo_logits(tiny.model, prompt)).abs().max() < 1e-4
                assert batch.insert(kv) == len(rows)
                rows.append(prompt)
            elif op == "insert_packed" and batch.size < 5:  # several prompts, one forward, one relayout
                k = min(5 - batch.size, 2 + n % 3)
                prompts = [[rng.randrange(3, vocab) for _ in range(1 + rng.randrange(60))] for _ in range(k)]
                logits, kvs = runner.prefill_packed(prompts)
                batch.reserve(k, max(len(p) for p in prompts))
                shape = (batch.cap_batch, batch.cap_seq)
                for prompt, lg, kv in zip(prompts, logits, kvs):
                    assert (lg - _solo_logits(tiny.model, prompt)).abs().max() < 1e-4
                    assert batch.insert(kv) == len(rows)
                    rows.append(prompt)
                assert (batch.cap_batch, batch.cap_seq) == shape  # reserve made all the room
            elif op == "step" and batch.size:
                feed = [rng.randrange(3, vocab) for _ in rows]
                logits = runner.decode(batch, torch.tensor(feed)[:, None])
                for r, tok in enumerate(feed):
                    rows[r].append(tok)
                    diff = (logits[r].float() - _solo_logits(tiny.model, rows[r])).abs().max()
                    assert diff < 1e-4, f"row {r} differs by {diff}"
            elif op == "remove" and batch.size:
                r = n % batch.size
                moved = batch.remove(r)
                if moved is not None:
                    rows[r] = rows[moved]
                rows.pop()
            elif op == "remove_many" and batch.size:
                gone = sorted(rng.sample(range(batch.size), 1 + n % batch.size))
                moved = batch.remove_many(gone, keep_buffers=bool(n % 2))
                kept = list(rows)
                for old, new in moved.items():
                    kept[new] = rows[old]
                rows = kept[:batch.size]
            elif op == "swap" and batch.size:  # swap-out to host and back in: exact bytes
                r = n % batch.size
                host = batch.extract(r, device="cpu")
                moved = batch.remove(r)
                tokens = rows[r]
                if moved is not None:
                    rows[r] = rows[moved]
                rows.pop()
                back = RowKV([k.clone() for k in host.keys], [v.clone() for v in host.values], host.length)
                assert batch.insert(back) == len(rows)
                rows.append(tokens)
                again = batch.extract(len(rows) - 1)
                assert all(torch.equal(a, b) for a, b in zip(again.keys + again.values, host.keys + host.values))
            elif op == "park" and batch.size:  # pause rows in place: they leave the decode step, K/V untouched
                park = sorted(rng.sample(range(batch.size), 1 + n % batch.size))
                drop = [r for r in range(batch.size) if r not in park and rng.random() < 0.2]
                moved, handles = batch.remove_and_park(drop, park, keep_buffers=bool(n % 2))
                parked += [(handles[r], rows[r]) for r in park]
                kept = list(rows)
                for old, new in moved.items():
                    kept[new] = rows[old]
                rows = kept[:batch.size]
            elif op == "unpark" and parked and batch.size < 5:  # resume: the same bytes, right-aligned again
                handle, tokens = parked.pop(n % len(parked))
                assert batch.unpark(handle) == len(rows)
                rows.append(tokens)
            elif op == "spill" and parked:  # a parked row's K/V copied out to host tensors
                handle, _ = parked[n % len(parked)]
                if handle.spilled is None:
                    batch.spill(handle)
            # invariants: lengths mirror the rows, the window is trimmed to the longest row, parked rows hold
            # their own buffer rows past the live ones
            assert batch.lengths == [len(t) for t in rows]
            assert batch.seq_len == max(batch.lengths, default=0)
            in_place = [h for h, _ in parked if h.spilled is None]
            assert batch.parked == in_place
            assert len({h.index for h in in_place}) == len(in_place)
            assert all(batch.size <= h.index < batch.cap_batch and h.start + h.length <= batch.cap_seq
                       for h in in_place)


def test_insert_longer_newcomer_left_pads_the_batch(tiny):
    """A newcomer longer than the batch widens the window on the left; older rows keep their K/V."""
    runner = ModelRunner(tiny.model, tiny.device)
    batch = runner.new_batch(4)
    with torch.inference_mode():
        _, short = runner.prefill([5, 6, 7])
        batch.insert(short)
        before = batch.extract(0)
        _, long = runner.prefill(list(range(10, 60)))
        batch.insert(long)
    assert batch.seq_len == 50 and batch.lengths == [3, 50]
    assert 0.0 < batch.padding_fraction < 0.5
    after = batch.extract(0)
    assert all(torch.equal(a, b) for a, b in zip(before.keys, after.keys))


def test_remove_trims_all_padding_columns_and_empty_batch_frees_memory(tiny):
    runner = ModelRunner(tiny.model, tiny.device)
    batch = runner.new_batch(4)
    with torch.inference_mode():
        for n in (4, 30):
            batch.insert(runner.prefill(list(range(3, 3 + n)))[1])
        assert batch.seq_len == 30
        batch.remove(1)
        assert batch.seq_len == 4 and batch.padding_fraction == 0.0
        batch.remove(0)
    assert batch.size == 0 and batch.capacity_bytes == 0


def test_insert_rejects_wrong_shapes_and_full_batch(tiny):
    runner = ModelRunner(tiny.model, tiny.device)
    batch = runner.new_batch(1)
    with torch.inference_mode():
        kv = runner.prefill([5, 6])[1]
        bad = RowKV([k[:, :1] for k in kv.keys], kv.values, kv.length)
        try:
            batch.insert(bad)
            raise AssertionError("shape mismatch accepted")
        except ValueError as exc:
            assert "row K/V must be" in str(exc)
        batch.insert(kv)
        try:
            batch.insert(kv)
            raise AssertionError("overfull batch accepted")
        except RuntimeError as exc:
            assert "full" in str(exc)


def test_row_groups_bound_padding_and_skip_small_batches(monkeypatch):
    cpu = torch.device("cpu")
    plan = attention.plan_row_groups([3000] + [200] * 31, cpu)
    assert plan is not None
    assert [(rows.tolist(), w) for rows, w in plan.groups] == [([0], 3001), (list(range(1, 32)), 201)]
    assert attention.plan_row_groups([200] * 32, cpu) is None  # uniform lengths: one call
    assert attention.plan_row_groups([50, 3], cpu) is None  # too little to save
    monkeypatch.setattr(attention, "_MIN_SAVED_CELLS", 0)
    plan = attention.plan_row_groups([50, 3, 20], cpu)
    assert [w for _, w in plan.groups] == [51, 21, 4]


def test_a_drifting_window_moves_within_its_buffers_instead_of_reallocating(tiny):
    """Rows that come and go keep the window about as wide while it drifts right one column per step; when it
    reaches the buffers' right edge it is moved back inside them (no new buffers), and every row's logits
    still equal a solo forward."""
    runner = ModelRunner(tiny.model, tiny.device)
    batch = runner.new_batch(max_batch_size=4)
    rows: list[list[int]] = []
    age: list[int] = []
    moves = 0
    with torch.inference_mode():
        for step in range(400):
            if step % 10 == 0 and batch.size < 4:  # a newcomer every 10 steps, each lives 40 steps
                prompt = [3 + (step + i) % 90 for i in range(12)]
                batch.insert(runner.prefill(prompt)[1])
                rows.append(prompt)
                age.append(0)
            if step == 40:
                buffers = (batch.k[0].data_ptr(), batch.cap_batch, batch.cap_seq)
            off = batch.off
            feed = [3 + (5 * step + r) % 90 for r in range(batch.size)]
            logits = runner.decode(batch, torch.tensor(feed)[:, None])
            moves += batch.off < off  # decode never moves the window left, only a move does
            for r, tok in enumerate(feed):
                rows[r].append(tok)
                age[r] += 1
                if step % 7 == 0:
                    assert (logits[r].float() - _solo_logits(tiny.model, rows[r])).abs().max() < 1e-4
            for r in reversed(range(batch.size)):
                if age[r] == 40:
                    moved = batch.remove(r)
                    if moved is not None:
                        rows[r], age[r] = rows[moved], age[moved]
                    rows.pop()
                    age.pop()
    assert moves >= 2
    assert (batch.k[0].data_ptr(), batch.cap_batch, batch.cap_seq) == buffers  # never reallocated


def test_remove_many_moves_only_the_survivors_above_the_new_size(tiny):
    runner = ModelRunner(tiny.model, tiny.device)
    batch = runner.new_batch(8)
    with torch.inference_mode():
        kvs = [runner.prefill(list(range(3, 3 + n)))[1] for n in (5, 9, 7, 12, 6, 8)]
        for kv in kvs:
            batch.insert(kv)
        before = {r: batch.extract(r) for r in range(6)}
        moved = batch.remove_many([0, 2, 3, 5])  # survivors 1 and 4; holes 0 (for 4)... 1 stays
    assert moved == {4: 0} and batch.lengths == [6, 9] and batch.seq_len == 9
    for new, old in ((0, 4), (1, 1)):
        got = batch.extract(new)
        assert all(torch.equal(a, b) for a, b in zip(got.keys + got.values, before[old].keys + before[old].values))
    with pytest.raises(IndexError):
        batch.remove_many([2])


def test_an_emptied_batch_keeps_its_buffers_when_asked_and_frees_them_on_release(tiny):
    runner = ModelRunner(tiny.model, tiny.device)
    batch = runner.new_batch(4)
    with torch.inference_mode():
        batch.insert(runner.prefill(list(range(3, 40)))[1])
        batch.remove(0, keep_buffers=True)
        assert batch.size == 0 and batch.cap_seq > 0
        batch.insert(runner.prefill(list(range(3, 20)))[1])  # rows come back into the same buffers
        with pytest.raises(RuntimeError):
            batch.release()
        batch.remove(0, keep_buffers=True)
        batch.release()
    assert batch.cap_seq == 0 and batch.capacity_bytes == 0


def test_a_parked_row_stays_in_place_while_the_window_moves_on(tiny):
    """A parked row keeps its columns; the window is trimmed to the live rows and moves within the buffers
    without copying the parked row; it resumes right-aligned, with exactly the bytes it had."""
    runner = ModelRunner(tiny.model, tiny.device)
    batch = runner.new_batch(max_batch_size=4)
    long_prompt, short_prompt = list(range(3, 203)), list(range(3, 13))
    for prompt in (long_prompt, short_prompt):
        batch.insert(runner.prefill(prompt)[1])
    before = batch.extract(0)
    _, handles = batch.remove_and_park([], [0])
    assert batch.lengths == [10] and batch.seq_len == 10  # the window no longer spans the parked row
    fed, relayouts, allocation = list(short_prompt), batch.num_relayouts, batch.allocation
    with torch.inference_mode():
        while batch.num_relayouts == relayouts:  # decode until the window reaches the buffers' right edge
            logits = runner.decode(batch, torch.tensor([[5]]))
            fed.append(5)
            assert len(fed) < 5_000
        assert (logits[0] - _solo_logits(tiny.model, fed)).abs().max() < 1e-4
    assert batch.allocation == allocation  # the window moved within the buffers, the parked row stayed
    assert batch.unpark(handles[0]) == 1 and batch.lengths == [len(fed), 200]
    again = batch.extract(1)
    assert all(torch.equal(a, b) for a, b in zip(again.keys + again.values, before.keys + before.values))


def test_parked_rows_move_to_spare_buffer_rows_and_spill_only_when_every_buffer_row_is_taken(tiny):
    """The buffers hold twice `max_batch_size` rows where rows can be parked: a newcomer that needs a parked row's
    buffer row moves it to a spare one; with every buffer row taken, the parked row is copied out (spilled) and
    comes back from host tensors. Every row resumes with exactly its bytes."""
    runner = ModelRunner(tiny.model, tiny.device)
    batch = runner.new_batch(max_batch_size=2)
    kvs = [runner.prefill(list(range(3, 3 + n)))[1] for n in (7, 30, 12, 50, 5)]
    handles = []
    for pair in (kvs[0:2], kvs[2:4]):
        for kv in pair:
            batch.insert(kv)
        handles += batch.remove_and_park([], [0, 1])[1].values()  # both rows parked; the batch decodes none
        assert batch.size == 0
    assert batch.cap_batch == 4 and sorted(h.index for h in handles) == [0, 1, 2, 3] and batch.num_spills == 0
    batch.insert(kvs[4])  # every buffer row is taken: the parked row in row 0 is copied out
    assert batch.num_spills == 1 and sum(h.spilled is not None for h in handles) == 1
    batch.remove(0)
    for handle, kv in zip(handles, kvs):
        row = batch.unpark(handle)
        again = batch.extract(row)
        assert again.length == kv.length
        assert all(torch.equal(a, b) for a, b in zip(again.keys + again.values, kv.keys + kv.values))
        batch.remove(row)
    assert batch.parked == []
