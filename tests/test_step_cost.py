"""The step cost model alone (`backend.step_cost.StepCostModel`): given synthetic timings it recovers their
coefficients, predicts nothing before it has seen enough distinct row counts, never lets a cost fall with the
batch, keeps what it learned at one batch size while it runs long at another, and follows a machine that
slows down. Pure Python, no model, no timing."""

from __future__ import annotations

import random

import pytest

from backend.step_cost import MIN_ROW_COUNTS, MIN_SAMPLES, StepCostModel


def _cpu(rows: int, seq_len: int) -> float:
    """An idealized CPU: 20 ms a step, 3 ms a row, 4 ms per row and 1,000 window columns."""
    return 20 + 3 * rows + 0.004 * rows * seq_len


def _feed(model: StepCostModel, n: int, cost=_cpu, rows=(1, 32), seq=(10, 2000), noise=0.0, seed=0) -> None:
    rng = random.Random(seed)
    for _ in range(n):
        b, s = rng.randint(*rows), rng.randint(*seq)
        model.observe_decode(b, s, cost(b, s) * (1 + rng.uniform(-noise, noise)))


def test_exact_timings_give_back_their_coefficients():
    model = StepCostModel()
    _feed(model, 300)
    assert model.coefficients == pytest.approx((20, 3, 4), abs=1e-6)  # c in ms per row per 1,000 tokens
    assert model.decode_ms(1, 100) == pytest.approx(_cpu(1, 100))
    assert model.decode_ms(32, 1500) == pytest.approx(_cpu(32, 1500))


def test_noisy_timings_give_back_their_coefficients_closely():
    model = StepCostModel()
    _feed(model, 2000, noise=0.1, seed=1)
    a, b, c = model.coefficients
    assert a == pytest.approx(20, rel=0.1) and b == pytest.approx(3, rel=0.1) and c == pytest.approx(4, rel=0.1)


def test_it_predicts_nothing_until_enough_distinct_row_counts_are_seen():
    model = StepCostModel()
    for _ in range(100):
        model.observe_decode(32, 500, _cpu(32, 500))  # a long run at one batch size only
    assert not model.ready and model.decode_ms(1, 500) is None
    for i in range(MIN_SAMPLES):
        assert not model.ready
        model.observe_decode(4, 500 + i, _cpu(4, 500 + i))
    assert model.ready and MIN_ROW_COUNTS == 2
    assert model.decode_ms(1, 500) == pytest.approx(_cpu(1, 500), rel=1e-3)  # rows only: S hardly varied


def test_without_window_spread_it_fits_rows_only():
    model = StepCostModel()
    _feed(model, 200, cost=lambda b, s: 20 + 3 * b, seq=(500, 500))
    assert model.coefficients == pytest.approx((20, 3, 0), abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_a_flat_gpu_gives_a_flat_model_never_a_cost_that_falls_with_the_batch(seed):
    model = StepCostModel()
    _feed(model, 500, cost=lambda b, s: 10.0, noise=0.05, seed=seed)
    a, b, c = model.coefficients
    assert b >= 0 and c >= 0 and a == pytest.approx(10, rel=0.05)
    assert model.decode_ms(33, 2000) <= 1.2 * model.decode_ms(1, 10)  # hardly grows: a cap would not bind


def test_a_long_run_at_one_batch_size_does_not_erase_the_others():
    model = StepCostModel()
    _feed(model, 200)
    for i in range(5000):  # minutes at batch 32
        model.observe_decode(32, 1000 + i % 50, _cpu(32, 1000 + i % 50))
    assert model.decode_ms(1, 100) == pytest.approx(_cpu(1, 100), rel=1e-6)


def test_it_follows_a_machine_that_slows_down():
    model = StepCostModel()
    _feed(model, 500)
    _feed(model, 3000, cost=lambda b, s: 2 * _cpu(b, s), seed=2)  # another process took half the cores
    assert model.decode_ms(8, 500) == pytest.approx(2 * _cpu(8, 500), rel=0.02)


def test_bad_samples_are_ignored():
    model = StepCostModel()
    for ms in (0.0, -1.0, float("nan"), float("inf")):
        model.observe_decode(4, 100, ms)
    model.observe_decode(0, 100, 5.0)
    assert model.num_samples == 0 and not model.ready


def test_prefill_and_copy_lines():
    model = StepCostModel()
    assert model.prefill_ms(100) is None and model.copy_ms(1000) is None and model.prefill_ms(0) == 0.0
    for tokens in range(50, 1050, 50):
        model.observe_prefill(tokens, 5 + 0.2 * tokens)  # 5 ms a forward, 0.2 ms a token
        model.observe_copy(tokens * 1000, 1 + tokens / 1000)
    assert model.prefill_ms(1000) == pytest.approx(205) and model.prefill_ms(1000, forwards=3) == pytest.approx(215)
    assert model.copy_ms(2_000_000) == pytest.approx(3)


def test_samples_of_one_size_give_a_rate_through_the_origin():
    model = StepCostModel()
    for _ in range(10):
        model.observe_prefill(256, 64.0)
    assert model.prefill_ms(128) == pytest.approx(32)


def test_alpha_is_validated():
    with pytest.raises(ValueError, match="alpha"):
        StepCostModel(alpha=0)


def _concave(rows: int, seq_len: int) -> float:
    """A step whose cost grows less than linearly with the rows (as this CPU's does: 85 ms at 1 row, 170 at 10,
    310 at 32), plus attention over the window."""
    return 60 + 25 * rows ** 0.5 + 0.004 * rows * seq_len


def test_a_step_that_is_not_linear_in_the_rows_is_predicted_at_every_row_count_seen():
    """One line through every row count predicts one row 30% too slow; with each row count's residual the
    interactive target's base (the chat alone) is right, and so is a row count between two seen ones."""
    model = StepCostModel()
    rng = random.Random(3)
    for _ in range(40):
        for rows in (1, 2, 4, 8, 16, 32):
            s = rng.randint(200, 600)
            model.observe_decode(rows, s, _concave(rows, s))
    for rows in (1, 4, 32):
        assert model.decode_ms(rows, 400) == pytest.approx(_concave(rows, 400), rel=0.03)
    assert model.decode_ms(12, 400) == pytest.approx(_concave(12, 400), rel=0.05)  # between 8 and 16
    assert model.decode_ms(64, 400) > model.decode_ms(32, 400)  # beyond the largest: the line's growth
