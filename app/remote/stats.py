"""What a remote engine's live panel shows, as `backend.EngineStats`, from the best source the server has:

1. `baton`: a `baton serve`'s `GET /v1/baton/stats` (its engine's whole snapshot, JSON);
2. `vllm`: a vLLM server's Prometheus `GET /metrics` (`vllm:num_requests_running`, `vllm:num_requests_waiting`,
   `vllm:kv_cache_usage_perc`), parsed with `prometheus_client`'s parser;
3. `client`: neither (SGLang, llama.cpp, Ollama...): this client's own requests and token rate only.

The source is named in `EngineStats.device` (e.g. `remote http://gpu:8000 · client-side rates only`), which
the live panel shows where it shows the device.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from typing import Any

from backend import EngineStats, RowStats

#: The KV "budget" a vLLM server's `kv_cache_usage_perc` (a fraction) is scaled to, so the panel shows the
#: fraction: vLLM reports no bytes.
KV_SCALE = 10_000
LABELS = {"baton": "baton serve stats", "vllm": "vLLM /metrics", "client": "client-side rates only"}


def from_baton(payload: dict[str, Any], label: str) -> EngineStats:
    """A `baton serve`'s `/v1/baton/stats` JSON back into `EngineStats` (unknown keys dropped).

    Raises:
        TypeError, ValueError, KeyError: the payload is not such a snapshot.
    """
    names = {f.name for f in dataclasses.fields(EngineStats)}
    values = {k: v for k, v in payload.items() if k in names}
    values["rows"] = tuple(RowStats(**r) for r in payload.get("rows", ()))
    values["waiting"] = tuple(RowStats(**r) for r in payload.get("waiting", ()))
    values["device"] = f"{label} ({values.get('device') or 'remote'})"
    return EngineStats(**values)


def vllm_gauges(text: str) -> dict[str, float]:
    """`num_requests_running`, `num_requests_waiting` and `kv_cache_usage_perc` (a fraction 0..1) from a vLLM
    server's Prometheus text, summed over label sets (one per model or engine); missing ones are absent.
    (vLLM before v0.10 named the last `vllm:gpu_cache_usage_perc`; both are read.)

    Raises:
        ValueError: the text is not Prometheus' exposition format.
    """
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"vllm:num_requests_running": "num_requests_running",
              "vllm:num_requests_waiting": "num_requests_waiting",
              "vllm:kv_cache_usage_perc": "kv_cache_usage_perc",
              "vllm:gpu_cache_usage_perc": "kv_cache_usage_perc"}
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = wanted.get(sample.name)
            if key is not None:
                found[key] = found.get(key, 0.0) + float(sample.value)
    return found


class ClientRates:
    """This client's requests and output token rate (the only stats any server allows). Written from the event
    loop, read from the UI and the stats thread: the token window is guarded by a lock.

    Args:
        horizon_s: the window the token rate is measured over (s).
    """

    def __init__(self, horizon_s: float = 5.0):
        self.horizon_s = horizon_s
        self._tokens: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()
        self.live: dict[str, RowStats] = {}
        self.counters: dict[str, int] = {"num_requests_received": 0, "num_generated_tokens": 0}

    def request(self, row: RowStats) -> None:
        """Count a new request, live as `row` until `done(row.request_id)`."""
        with self._lock:
            self.counters["num_requests_received"] += 1
        self.live[row.request_id] = row

    def done(self, request_id: str) -> None:
        """The request has ended."""
        self.live.pop(request_id, None)

    def token(self, n: int = 1) -> None:
        """Count `n` streamed tokens now."""
        with self._lock:
            self._tokens.append((time.monotonic(), n))
            self.counters["num_generated_tokens"] += n

    def tokens_per_s(self) -> float:
        """Output tokens per second over the last `horizon_s` seconds."""
        cutoff = time.monotonic() - self.horizon_s
        with self._lock:
            while self._tokens and self._tokens[0][0] < cutoff:
                self._tokens.popleft()
            return sum(n for _, n in self._tokens) / self.horizon_s

    def snapshot(self, label: str, model: str, gauges: dict[str, float] | None = None) -> EngineStats:
        """The panel's `EngineStats`: this client's live requests as rows, or with vLLM gauges, anonymous rows
        and waiting entries in those numbers and the KV usage as `kv_used_bytes / kv_budget_bytes`
        (scaled to `KV_SCALE`)."""
        rows = tuple(self.live.values())
        waiting: tuple[RowStats, ...] = ()
        kv_used = kv_budget = 0
        if gauges is not None:
            running = int(gauges.get("num_requests_running", 0))
            rows = tuple(RowStats(f"remote-{i + 1}", "", "running", 0, 0) for i in range(running))
            waiting = tuple(RowStats(f"remote-w{i + 1}", "", "waiting", 0, 0)
                            for i in range(int(gauges.get("num_requests_waiting", 0))))
            if "kv_cache_usage_perc" in gauges:
                kv_budget, kv_used = KV_SCALE, int(gauges["kv_cache_usage_perc"] * KV_SCALE)
        rate = self.tokens_per_s()
        with self._lock:
            counters = dict(self.counters)
        return EngineStats(rows=rows, waiting=waiting, output_tokens_per_s=rate, counters=counters,
                           kv_used_bytes=kv_used, kv_budget_bytes=kv_budget, device=label, model=model)
