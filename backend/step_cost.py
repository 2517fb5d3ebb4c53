"""What a decode step, a prefill and a K/V copy cost on this machine, learned from the engine's own timings.

The interactive latency target (`EngineConfig.interactive_tpot_slo`, `sched_slo.py`) needs to know how much a
decode step slows down when background rows share it. That depends on the machine: on a CPU a step over 32
rows costs several times a step over one; on a GPU it hardly grows (the weights are read once per step
whatever the rows). So the engine learns it (pure Python, no torch):

- **Decode step (ms) = a + b*B + c*B*S** (B rows, S window columns): a is the weights' pass, b the per-row
  work (matmuls, sampling), c attention over the padded window. Least squares on these features; each row
  count B keeps exponentially forgotten moments of its own samples (`alpha`: about the last 1/alpha steps),
  and the fit weighs every row count seen (up to `MAX_BUCKET_WEIGHT` samples' worth each), so a long run at
  one batch size refines that point without erasing what was learned at others (least squares with one
  global forgetting factor "winds up": after minutes at B=32 it could no longer tell B=1 from B=32).
  Coefficients are kept non-negative (the best of the nested fits {1}, {1,B}, {1,BS}, {1,B,BS} whose slopes
  are all >= 0), so a flat GPU yields a flat model, never a cost that falls with B.
- **Per row count correction.** A real step is not linear in B (on this 2-core CPU with SmolLM2-135M a
  step over 1 row took 85 ms, over 10 rows 170 ms, over 32 rows 310 ms: one line through all of them predicted
  115 ms for 1 row, so the interactive target's base, and with it every cap, was 35% too loose; issue #13).
  So each row count seen keeps its residual, its mean step time minus the line's prediction at its mean window,
  and a prediction adds the residual of its row count, interpolated linearly between the nearest row counts
  seen (the nearest one's beyond them): exact at every observed (B, mean S), the line's slope in S between.
- **Prefill forward (ms) = p0 + p1*tokens** and **K/V copy (ms) = q0 + q1*bytes** (swap-out, swap-in),
  exponentially forgotten least-squares lines (a plain ratio while every sample has the same size).
  Approximation: a prefill's attention cost (quadratic in the prompt, and growing with a chunk's start) is
  folded into the per-token slope.

Until it is **ready** (at least `MIN_ROW_COUNTS` distinct row counts with `MIN_SAMPLES` samples each), the
decode model predicts nothing (`decode_ms` returns None) and the target does not cap anything: the engine
behaves as without a target. We chose "do not cap" over "cap conservatively": a wrong conservative cap swaps
rows out on a GPU where nothing needed it, and row counts vary naturally (rows join and finish, a chat
decodes alone), so the model is ready within the first few dozen steps of a typical session.

Sources: the idea of keeping decode steps under a TPOT target by bounding the other work that shares them is
Sarathi-Serve's (Agrawal et al., OSDI 2024, "stall-free" batching under a TPOT SLO); the priority classes and
swap-out are BATON's (arXiv 2410.18701 §4.3) and vLLM's priority scheduling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

MIN_SAMPLES = 3  # samples a row count needs before it takes part in the fit
MIN_ROW_COUNTS = 2  # distinct row counts (with MIN_SAMPLES each) before the decode model predicts
MAX_BUCKET_WEIGHT = 8.0  # one row count weighs at most this many samples in the fit
SEQ_UNIT = 1000.0  # window lengths are fitted in thousands of tokens (better conditioned)
REFIT_EVERY = 16  # decode samples between two fits (a fit costs ~0.1-0.3 ms of Python), unless a row count joins


class StepCost(Protocol):
    """What the scheduler reads of a cost model (`StepCostModel`, or a fixed one a test injects). Every method
    returns None when it cannot predict yet."""

    def decode_ms(self, rows: int, seq_len: int) -> float | None:
        """A decode step over `rows` rows and a window of `seq_len` columns (ms)."""

    def prefill_ms(self, tokens: int, forwards: int = 1) -> float | None:
        """`forwards` prefill forwards over `tokens` prompt tokens in all (ms)."""

    def copy_ms(self, nbytes: int) -> float | None:
        """Copying `nbytes` of K/V (a swap-in, swap-out or relayout; ms)."""


def _solve(m: list[list[float]], v: list[float]) -> list[float] | None:
    """Solve `m x = v` (a small symmetric system) by Gaussian elimination with partial pivoting after
    scaling by the diagonal; None when it is (nearly) singular."""
    n = len(v)
    d = [math.sqrt(m[i][i]) if m[i][i] > 0 else 0.0 for i in range(n)]
    if not all(d):
        return None
    a = [[m[i][j] / (d[i] * d[j]) for j in range(n)] + [v[i] / d[i]] for i in range(n)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[piv][col]) < 1e-6:
            return None
        a[col], a[piv] = a[piv], a[col]
        for r in range(n):
            if r != col:
                f = a[r][col] / a[col][col]
                a[r] = [x - f * y for x, y in zip(a[r], a[col])]
    return [a[i][n] / a[i][i] / d[i] for i in range(n)]


@dataclass
class _Moments:
    """Exponentially forgotten means of x, x^2, y, x*y, y^2 and the number of samples (one row count's seq
    lengths, or a line's x)."""

    alpha: float
    n: int = 0
    x: float = 0.0
    xx: float = 0.0
    y: float = 0.0
    xy: float = 0.0
    yy: float = 0.0

    def add(self, x: float, y: float) -> None:
        self.n += 1
        w = max(self.alpha, 1.0 / self.n)  # a plain mean of the first 1/alpha samples, then forgetting
        for name, value in (("x", x), ("xx", x * x), ("y", y), ("xy", x * y), ("yy", y * y)):
            setattr(self, name, (1 - w) * getattr(self, name) + w * value)


@dataclass
class _Line:
    """y = p0 + p1 * x, least squares on exponentially forgotten moments; a ratio y/x through the origin
    while x has (nearly) no spread."""

    alpha: float
    m: _Moments = field(init=False)

    def __post_init__(self) -> None:
        self.m = _Moments(self.alpha)

    def add(self, x: float, y: float) -> None:
        if x > 0 and y >= 0 and math.isfinite(y):
            self.m.add(x, y)

    def predict(self, x: float, intercepts: int = 1) -> float | None:
        m = self.m
        if not m.n:
            return None
        var = m.xx - m.x * m.x
        if var > 1e-6 * m.xx and m.n >= MIN_SAMPLES:
            slope = (m.xy - m.x * m.y) / var
            p0 = m.y - slope * m.x
            if slope >= 0 and p0 >= 0:
                return intercepts * p0 + slope * x
        return m.y / m.x * x  # through the origin (no spread yet, or a negative coefficient)


class StepCostModel:
    """Decode, prefill and copy costs learned online (see the module docstring). Owned by the engine thread;
    the scheduler only reads it.

    Args:
        alpha: forgetting rate of each row count's (and each line's) moments: each new sample weighs `alpha`
            (about the last 1/alpha samples count).

    Attributes:
        num_samples: decode steps observed.
    """

    def __init__(self, alpha: float = 0.1):
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha: must be in (0, 1], got {alpha!r}")
        self.alpha = alpha
        self._buckets: dict[int, _Moments] = {}  # row count B -> moments of (S in SEQ_UNITs, step ms)
        self._prefill = _Line(alpha)
        self._copy = _Line(alpha)
        self._coef: tuple[float, float, float] | None = None
        self._residuals: list[tuple[int, float]] = []  # (row count, mean ms - the line's ms), by row count
        self._fitted_at = 0  # num_samples at the last fit
        self.num_samples = 0

    # ------------------------------------------------------------------------------------ learning
    def observe_decode(self, rows: int, seq_len: int, ms: float) -> None:
        """One decode step over `rows` rows and a `seq_len`-column window took `ms` milliseconds."""
        if rows < 1 or not (math.isfinite(ms) and ms > 0):
            return
        bucket = self._buckets.setdefault(rows, _Moments(self.alpha))
        bucket.add(seq_len / SEQ_UNIT, ms)
        self.num_samples += 1
        if bucket.n == MIN_SAMPLES or self.num_samples - self._fitted_at >= REFIT_EVERY:
            self._refit()

    def observe_prefill(self, tokens: int, ms: float) -> None:
        """One prefill forward (a packed group or a chunk) over `tokens` prompt tokens took `ms`."""
        self._prefill.add(tokens, ms)

    def observe_copy(self, nbytes: int, ms: float) -> None:
        """Copying `nbytes` of K/V (a swap-out or swap-in) took `ms`."""
        self._copy.add(nbytes, ms)

    # ---------------------------------------------------------------------------------- predicting
    @property
    def ready(self) -> bool:
        """Enough distinct row counts seen for the decode model to predict."""
        return self.coefficients is not None

    @property
    def coefficients(self) -> tuple[float, float, float] | None:
        """(a ms, b ms/row, c ms/(row * 1000 tokens)) of the decode model, or None before it is ready. Refitted
        every `REFIT_EVERY` samples, and as soon as a row count has enough samples to take part."""
        return self._coef

    def _refit(self) -> None:
        self._coef, self._fitted_at = self._fit(), self.num_samples
        self._residuals = [] if self._coef is None else [
            (rows, m.y - self._line(rows, m.x * SEQ_UNIT))
            for rows, m in sorted(self._buckets.items()) if m.n >= MIN_SAMPLES]

    def _line(self, rows: int, seq_len: float) -> float:
        a, b, c = self._coef
        return a + b * rows + c * rows * seq_len / SEQ_UNIT

    def residual_ms(self, rows: int) -> float:
        """The correction added to the line at `rows` rows (ms): the observed row counts' residuals,
        interpolated linearly between the nearest two, the nearest one's beyond them; 0 before a fit."""
        res = self._residuals
        if not res:
            return 0.0
        if rows <= res[0][0]:
            return res[0][1]
        for (b0, r0), (b1, r1) in zip(res, res[1:]):
            if rows <= b1:
                return r0 + (r1 - r0) * (rows - b0) / (b1 - b0)
        return res[-1][1]

    def decode_ms(self, rows: int, seq_len: int) -> float | None:
        if self._coef is None:
            return None
        line = self._line(rows, seq_len)
        return max(line + self.residual_ms(rows), 0.05 * line)

    def prefill_ms(self, tokens: int, forwards: int = 1) -> float | None:
        return self._prefill.predict(tokens, forwards) if tokens > 0 else 0.0

    def copy_ms(self, nbytes: int) -> float | None:
        return self._copy.predict(nbytes) if nbytes > 0 else 0.0

    def _fit(self) -> tuple[float, float, float] | None:
        """Weighted least squares of step ms on [1, B, B*S] over the row counts with enough samples, the best
        nested fit with non-negative slopes."""
        used = {rows: m for rows, m in self._buckets.items() if m.n >= MIN_SAMPLES}
        if len(used) < MIN_ROW_COUNTS:
            return None
        xtx = [[0.0] * 3 for _ in range(3)]
        xty, yty = [0.0] * 3, 0.0
        for rows, m in used.items():
            w, B = min(m.n, MAX_BUCKET_WEIGHT), float(rows)
            # E[x x^T] and E[x y] of x = [1, B, B*S] for this row count, from its moments of S and y
            exx = [[1.0, B, B * m.x], [B, B * B, B * B * m.x], [B * m.x, B * B * m.x, B * B * m.xx]]
            exy = [m.y, B * m.y, B * m.xy]
            for i in range(3):
                xty[i] += w * exy[i]
                for j in range(3):
                    xtx[i][j] += w * exx[i][j]
            yty += w * m.yy
        best: tuple[float, tuple[float, float, float]] | None = None
        for extra in ((1, 2), (1,), (2,), ()):
            idx = (0, *extra)
            theta = _solve([[xtx[i][j] for j in idx] for i in idx], [xty[i] for i in idx])
            if theta is None or any(t < 0 for t in theta[1:]):
                continue
            sse = yty - sum(t * xty[i] for t, i in zip(theta, idx))
            coef = [0.0, 0.0, 0.0]
            for t, i in zip(theta, idx):
                coef[i] = t
            if best is None or sse < best[0] - 1e-12 * abs(yty):
                best = (sse, (max(coef[0], 0.0), coef[1], coef[2]))
        return None if best is None else best[1]
