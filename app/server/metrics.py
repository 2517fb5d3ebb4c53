"""`GET /metrics`: Prometheus text (`prometheus-client`), named as vLLM's metrics with a `baton:` prefix so
dashboards built for vLLM fit (vLLM docs, "Production Metrics"; `vllm/v1/metrics/loggers.py`).

Read from the engine's stats snapshot at each scrape (`backend.EngineStats`):
- `baton:num_requests_running` (gauge): rows of the running batch.
- `baton:num_requests_waiting` (gauge): queued requests not yet admitted (new ones and long prompts between
  prefill chunks).
- `baton:num_requests_swapped` (gauge): requests preempted to host memory (vLLM v0's name).
- `baton:kv_cache_usage_perc` (gauge, 0..1 as vLLM's): K/V bytes the engine holds (the padded window plus
  long prompts' K/V between chunks) over the KV budget it keeps them under; 0 while it has no budget yet.
- `baton:prompt_tokens_total`, `baton:generation_tokens_total`, `baton:num_preemptions_total` (counters):
  prompt tokens prefilled, tokens generated, preemptions (swap-outs), since the engine started.
- `baton:prefix_cache_queries_total`, `baton:prefix_cache_hits_total` (counters, vLLM v1's): prompt tokens
  looked up in the prefix cache, and of those the tokens served from it.

Observed per request by `MeteredEngine`, every request the server sends (HTTP routes and batch jobs):
- `baton:time_to_first_token_seconds` (histogram): from the request's submission to the engine to its first
  token (s; an HTTP request's prompt is tokenized just before, in a worker thread, and that is not counted).
- `baton:time_per_output_token_seconds` (histogram): each gap between two tokens of a request (s; vLLM's
  per-token observation, the inter-token latency).
- `baton:e2e_request_latency_seconds` (histogram): intake to the last output, for requests that finished
  `stop`, `length` or `cancelled` (s).
- `baton:request_success_total{finished_reason}` (counter): those requests by finish reason (`stop`,
  `length`, `cancelled`; vLLM's `abort` is Baton's `cancelled`).
Every metric carries vLLM's `model_name` label. Buckets are vLLM's.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from backend import Engine, TokenOutput

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
#: Finish reasons counted in `baton:request_success_total` (an `error` is not a success).
COUNTED_REASONS = ("stop", "length", "cancelled")


class ServerMetrics:
    """The server's Prometheus registry: the engine's gauges and counters, read at scrape time, and the
    per-request latency histograms.

    Args:
        engine: the engine whose `stats()` the gauges and counters read.
        model_name: the `model_name` label (the served model's name).
    """

    def __init__(self, engine: Engine, model_name: str):
        self.registry = CollectorRegistry()
        self.model_name = model_name
        label = ["model_name"]
        self.ttft = Histogram("baton:time_to_first_token_seconds", "Time to first token (s).", label,
                              buckets=TTFT_BUCKETS, registry=self.registry).labels(model_name)
        self.tpot = Histogram("baton:time_per_output_token_seconds", "Time between two output tokens (s).", label,
                              buckets=TPOT_BUCKETS, registry=self.registry).labels(model_name)
        self.e2e = Histogram("baton:e2e_request_latency_seconds", "End-to-end request latency (s).", label,
                             buckets=E2E_BUCKETS, registry=self.registry).labels(model_name)
        self.finished = Counter("baton:request_success", "Requests finished, by finish reason.",
                                ["model_name", "finished_reason"], registry=self.registry)
        self.registry.register(_EngineCollector(engine, model_name))

    def exposition(self) -> bytes:
        """The registry in Prometheus's text format."""
        return generate_latest(self.registry)


class _EngineCollector:
    """Gauges and counters read from `engine.stats()` when Prometheus scrapes."""

    def __init__(self, engine: Engine, model_name: str):
        self.engine, self.model_name = engine, model_name

    def collect(self) -> Iterator[Metric]:
        stats = self.engine.stats()
        states = stats.rows_by_state()
        held = stats.kv_window_bytes + stats.prefill_cache_bytes
        usage = min(1.0, held / stats.kv_budget_bytes) if stats.kv_budget_bytes else 0.0
        counters = stats.counters
        yield self._metric(GaugeMetricFamily, "baton:num_requests_running", "Requests in the running batch.",
                           states["running"])
        yield self._metric(GaugeMetricFamily, "baton:num_requests_waiting", "Requests waiting to be admitted.",
                           states["waiting"] + states["prefilling"])
        yield self._metric(GaugeMetricFamily, "baton:num_requests_swapped",
                           "Requests preempted to host memory.", states["swapped"])
        yield self._metric(GaugeMetricFamily, "baton:kv_cache_usage_perc",
                           "KV cache usage: bytes held over the KV budget (1 = full).", usage)
        yield self._metric(CounterMetricFamily, "baton:prompt_tokens", "Prompt tokens prefilled.",
                           counters.get("num_prompt_tokens", 0))
        yield self._metric(CounterMetricFamily, "baton:generation_tokens", "Tokens generated.",
                           counters.get("num_generated_tokens", 0))
        yield self._metric(CounterMetricFamily, "baton:num_preemptions", "Preemptions (swap-outs).",
                           counters.get("num_preemptions", 0))
        yield self._metric(CounterMetricFamily, "baton:prefix_cache_queries",
                           "Prompt tokens looked up in the prefix cache.", counters.get("num_prefix_cache_queries", 0))
        yield self._metric(CounterMetricFamily, "baton:prefix_cache_hits",
                           "Prompt tokens served from the prefix cache.", counters.get("num_prefix_cache_hits", 0))

    def _metric(self, kind: type, name: str, doc: str, value: float) -> Metric:
        family = kind(name, doc, labels=["model_name"])
        family.add_metric([self.model_name], value)
        return family


class MeteredEngine:
    """An `Engine` whose `generate` feeds the latency histograms; everything else is the engine's own.

    The server hands this to its routes and its `JobRunner`, so HTTP requests and batch jobs are measured
    alike.
    """

    def __init__(self, engine: Engine, metrics: ServerMetrics):
        self._engine, self._metrics = engine, metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def generate(self, *args: Any, **kwargs: Any) -> AsyncIterator[TokenOutput]:
        """`Engine.generate`, observing TTFT, each inter-token gap and the end-to-end latency (s)."""
        m = self._metrics
        start = last = time.perf_counter()
        first = True
        outputs = self._engine.generate(*args, **kwargs)
        try:
            async for out in outputs:
                now = time.perf_counter()
                if out.token_id is not None:
                    (m.ttft if first else m.tpot).observe(now - last)
                    first, last = False, now
                if out.finish_reason in COUNTED_REASONS:
                    m.e2e.observe(now - start)
                    m.finished.labels(m.model_name, out.finish_reason).inc()
                yield out
        finally:
            await outputs.aclose()  # leaving early cancels the request in the engine


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of the server's metrics."""
    return Response(request.app.state.baton.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
