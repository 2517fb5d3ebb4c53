"""Serving metrics with vLLM `benchmark_serving.py` definitions, and peak-memory sampling.

Per request (times from its arrival): TTFT = first token time - arrival; E2E = last token time - arrival;
TPOT = (E2E - TTFT) / (n - 1) for requests with n > 1 output tokens; ITL = every gap between two consecutive
tokens of a request, pooled over all requests. Each is summarised by mean, median, p90 and p99
(`numpy.percentile`, linear interpolation, as vLLM). Throughputs divide by the run's duration: from the start
of the run (the first arrival) to the last token of the last request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import psutil
import torch

PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    """What one system did with one request.

    Attributes:
        index: the request's index in the workload.
        arrival: when it arrived (`time.perf_counter()` seconds).
        prompt_tokens, target_tokens: its prompt length and the output length asked for.
        token_ids: the generated tokens.
        token_times: when each token became available to the caller (`perf_counter` seconds).
    """

    index: int
    arrival: float
    prompt_tokens: int
    target_tokens: int
    token_ids: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)


@dataclass
class SystemRun:
    """One system's run over the workload.

    Attributes:
        records: one per request, in workload order.
        start: start of the run (`perf_counter` seconds; arrival offsets count from here).
        extra: system-specific measurements (`kv_cache_bytes`, `idle_fraction`, `kv_padding_fraction` and their
            `*_note` strings, counters); None values mean "not measured" and carry a note.
    """

    records: list[RequestRecord]
    start: float
    extra: dict = field(default_factory=dict)


def distribution(values_ms: list[float]) -> dict:
    """mean, median, p90, p99 (ms) of a list; None fields for an empty list."""
    if not values_ms:
        return {"mean": None, "median": None, "p90": None, "p99": None}
    arr = np.asarray(values_ms, dtype=float)
    p50, p90, p99 = np.percentile(arr, PERCENTILES)
    return {"mean": float(arr.mean()), "median": float(p50), "p90": float(p90), "p99": float(p99)}


def per_request(r: RequestRecord) -> dict:
    """TTFT, E2E, TPOT (ms) of one request (None when it produced no token)."""
    if not r.token_times:
        return {"ttft_ms": None, "e2e_ms": None, "tpot_ms": None}
    ttft = (r.token_times[0] - r.arrival) * 1000
    e2e = (r.token_times[-1] - r.arrival) * 1000
    n = len(r.token_times)
    return {"ttft_ms": ttft, "e2e_ms": e2e, "tpot_ms": (e2e - ttft) / (n - 1) if n > 1 else None}


def summarize(run: SystemRun, keep_tokens: bool = False) -> dict:
    """vLLM-style summary of a run, plus the per-request rows (index, lengths, TTFT, E2E, TPOT)."""
    done = [r for r in run.records if r.token_times]
    end = max((r.token_times[-1] for r in done), default=run.start)
    duration = max(end - run.start, 1e-9)
    rows = []
    for r in run.records:
        row = {"index": r.index, "arrival_s": r.arrival - run.start, "prompt_tokens": r.prompt_tokens,
               "target_tokens": r.target_tokens, "output_tokens": len(r.token_ids), **per_request(r)}
        if keep_tokens:
            row["token_ids"] = list(r.token_ids)
        rows.append(row)
    itl = [(b - a) * 1000 for r in done for a, b in zip(r.token_times, r.token_times[1:])]
    total_in = sum(r.prompt_tokens for r in done)
    total_out = sum(len(r.token_ids) for r in done)
    return {
        "completed": len(done),
        "duration_s": duration,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(done) / duration,
        "output_throughput": total_out / duration,
        "total_token_throughput": (total_in + total_out) / duration,
        "ttft_ms": distribution([x["ttft_ms"] for x in rows if x["ttft_ms"] is not None]),
        "tpot_ms": distribution([x["tpot_ms"] for x in rows if x["tpot_ms"] is not None]),
        "itl_ms": distribution(itl),
        "e2e_ms": distribution([x["e2e_ms"] for x in rows if x["e2e_ms"] is not None]),
        **run.extra,
        "requests": rows,
    }


class PeakMemory:
    """Peak memory while a block runs: `torch.cuda.max_memory_allocated` on CUDA, else the process RSS
    sampled every `interval_s` by a thread (psutil). Use as a context manager; read `.result()` after."""

    def __init__(self, device: torch.device, interval_s: float = 0.01):
        self.device, self.interval_s = device, interval_s
        self._stop = threading.Event()
        self._peak = self._base = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            proc = psutil.Process()
            self._base = self._peak = proc.memory_info().rss
            self._thread = threading.Thread(target=self._sample, args=(proc,), daemon=True)
            self._thread.start()
        return self

    def _sample(self, proc: psutil.Process) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, psutil.Process().memory_info().rss)

    def result(self) -> dict:
        kind = "cuda_max_memory_allocated" if self.device.type == "cuda" else "process_rss_peak"
        return {"peak_memory_bytes": self._peak, "peak_memory_kind": kind,
                "peak_memory_over_start_bytes": self._peak - self._base}


def ratios(baton: dict, peer: dict) -> dict:
    """baton / peer for throughputs and latency statistics (> 1 is better for throughputs, < 1 for latencies)."""
    out = {}
    for key in ("output_throughput", "request_throughput", "total_token_throughput"):
        out[key] = _div(baton.get(key), peer.get(key))
    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        for stat in ("mean", "median", "p99"):
            out[f"{metric}_{stat}"] = _div(baton[metric][stat], peer[metric][stat])
    return out


def _div(a, b):
    return None if a is None or not b else a / b
