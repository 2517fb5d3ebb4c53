"""`LivePanel`: the engine's device memory, KV cache, batch and throughput, refreshed a few times a second.

It polls two cheap callables on a timer: `stats()` (the engine's latest `EngineStats` snapshot, or None while
the engine is loading or stopped) and `memory()` (a `backend.memory.DeviceMemory` reading, or None). On a CPU
it shows this process's resident memory labelled "process RSS", never as GPU memory.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widget import Widget
from textual.widgets import DataTable, ProgressBar, Sparkline, Static

from backend import DeviceMemory
from backend import EngineStats, RowStats

from .format import format_bytes, format_pct, format_rate, short_id

__all__ = ["LivePanel"]

Describe = Callable[[str], tuple[str, str]]
COLUMNS = (("request", "request", None), ("kind", "kind", None), ("prio", "priority", None), ("state", "state", None),
           ("ctx", "context", 5), ("gen", "generated", 5))  # (header, key, fixed width: up to 99,999 tokens)
LABEL_WIDTH = 18  # characters of a request label before it is cut with "…"
PRIORITY_SHORT = {"interactive": "inter"}  # keeps the table inside the panel's width


def prefix_cache_line(s: EngineStats) -> Content:
    """The prefix cache's line: held bytes (per tier) of its bound, and the share of looked-up prompt tokens
    it served; the interactive target's background cap when one holds now (issue #13)."""
    if not s.prefix_cache_capacity_bytes:
        line = Content.from_markup("[b]prefix cache[/b] [dim]off[/]")
    else:
        host = f" + {format_bytes(s.prefix_cache_host_bytes)} host" if s.prefix_cache_host_bytes else ""
        line = Content.from_markup("[b]prefix cache[/b] $held$host of $cap · $hit hit",
                                   held=format_bytes(s.prefix_cache_bytes), host=host,
                                   cap=format_bytes(s.prefix_cache_capacity_bytes),
                                   hit=format_pct(s.prefix_cache_hit_rate))
    if s.slo_background_cap is not None:
        line += Content.from_markup("\n[b]chat target[/b] ≤ $cap background rows", cap=s.slo_background_cap)
    return line


def default_describe(request_id: str) -> tuple[str, str]:
    """The label when the app gives none: the request id's first characters, kind `request`."""
    return short_id(request_id), "request"


class LivePanel(Widget):
    """Live view of the engine: device memory, KV cache, batch/queue, rates with a history, and the rows.

    Args:
        stats: returns the engine's latest snapshot (`Engine.stats`), or None when no engine is running.
        memory: returns a device memory reading (e.g. `lambda: read_device_memory(engine.model.device)`),
            or None when there is nothing to read yet.
        describe: maps a request id to `(label, kind)`, e.g. `("chat: Trip to Rome", "chat")`; the default
            shows the id's first 8 characters and kind `request`. Called for every row on every refresh, so
            it should be a dictionary lookup, not I/O.
        interval: seconds between refreshes (> 0).
        max_batch_size: the engine's `max_batch_size`, shown as "batch 3/32" (None shows only the size).
    Raises:
        ValueError: `interval` is not positive.
    A callable that raises is logged and treated as returning None, so the panel never takes the app down.
    """

    DEFAULT_CSS = """
    LivePanel { width: 64; height: 1fr; padding: 0 1; border: round $primary 60%; border-title-color: $primary; }
    LivePanel > Static { width: 1fr; }
    LivePanel #device { text-style: bold; color: $text; }
    LivePanel #memory-bar { width: 1fr; margin-bottom: 1; }
    LivePanel #memory-bar Bar { width: 1fr; }
    LivePanel #status { color: $warning; text-style: bold; display: none; }
    LivePanel.-idle #status { display: block; }
    LivePanel.-idle #engine, LivePanel.-no-memory #memory, LivePanel.-no-memory #memory-bar { display: none; }
    LivePanel #engine { height: 1fr; }
    LivePanel #engine > Static { width: 1fr; }
    LivePanel #kv { margin-bottom: 1; }
    LivePanel #tokens { height: 2; margin: 0 0 1 0; }
    LivePanel #rows { height: 1fr; }
    """

    HISTORY = 60
    """Output tokens/s samples kept for the sparkline (one per refresh: 30 s at the default interval)."""

    def __init__(self, stats: Callable[[], EngineStats | None], memory: Callable[[], DeviceMemory | None],
                 describe: Describe | None = None, *, interval: float = 0.5, max_batch_size: int | None = None,
                 id: str | None = None, classes: str | None = None) -> None:
        if not interval > 0:
            raise ValueError(f"interval: must be > 0 seconds, got {interval!r}")
        super().__init__(id=id, classes=classes)
        self._stats_source, self._memory_source = stats, memory
        self._describe = describe or default_describe
        self.interval = interval
        self.max_batch_size = max_batch_size
        self.history: deque[float] = deque([0.0] * self.HISTORY, maxlen=self.HISTORY)
        self.border_title = "Engine"

    def compose(self) -> ComposeResult:
        yield Static(id="device")
        yield Static(id="memory")
        yield ProgressBar(total=1, show_eta=False, id="memory-bar")
        yield Static("engine not running: loading the model, or stopped", id="status")
        with Vertical(id="engine"):
            yield Static(id="kv")
            yield Static(id="prefix")
            yield Static(id="batch")
            yield Sparkline(list(self.history), id="tokens")
            yield DataTable(id="rows", cursor_type="none", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one("#rows", DataTable)
        for header, key, width in COLUMNS:
            table.add_column(Text(header, justify="left" if width is None else "right"), key=key, width=width)
        self.refresh_now()
        self.set_interval(self.interval, self._tick)

    def _tick(self) -> None:
        if self.display:  # hidden (e.g. the panel toggled off): no polling, no redraws
            self.refresh_now()

    def refresh_now(self) -> None:
        """Read `stats()` and `memory()` once and redraw everything (the timer calls this; so can tests)."""
        stats: EngineStats | None = self._poll(self._stats_source)
        memory: DeviceMemory | None = self._poll(self._memory_source)
        self.set_class(stats is None, "-idle")
        self.set_class(memory is None, "-no-memory")
        self._show_device(stats, memory)
        if memory is not None:
            self._show_memory(memory)
        if stats is not None:
            self.history.append(stats.output_tokens_per_s)
            self._show_engine(stats)

    # ------------------------------------------------------------------------------- sections
    def _poll(self, source: Callable[[], object]) -> object:
        try:
            return source()
        except Exception as exc:  # a failing source must not kill the refresh timer (or the app)
            self.log.warning(f"LivePanel: {source!r} failed: {exc!r}")
            return None

    def _show_device(self, stats: EngineStats | None, memory: DeviceMemory | None) -> None:
        device = f"{memory.name} ({memory.device})" if memory else (stats.device if stats else "no device")
        model = stats.model if stats and stats.model else ""
        markup = "$model [dim]on[/] $device" if model else "$device"
        self.query_one("#device", Static).update(Content.from_markup(markup, model=model, device=device))

    def _show_memory(self, m: DeviceMemory) -> None:
        if m.kind == "cuda":
            util = "–" if m.utilization_pct is None else f"{m.utilization_pct:.0f}%"
            via = "" if m.source == "nvml" else f" [dim](via {m.source})[/]"
            text = Content.from_markup(
                "[b]GPU memory[/b]  $used / $total · util $util" + via
                + "\n[dim]torch[/]  $alloc allocated · $reserved reserved",
                used=format_bytes(m.used_bytes), total=format_bytes(m.total_bytes), util=util,
                alloc=format_bytes(m.torch_allocated_bytes), reserved=format_bytes(m.torch_reserved_bytes))
        else:
            text = Content.from_markup("[b]process RSS[/b]  $rss [dim]of[/] $total RAM",
                                       rss=format_bytes(m.process_rss_bytes), total=format_bytes(m.total_bytes))
        self.query_one("#memory", Static).update(text)
        self.query_one("#memory-bar", ProgressBar).update(total=max(1, m.total_bytes), progress=m.used_bytes)

    def _show_engine(self, s: EngineStats) -> None:
        """The KV cache, prefix cache, batch and rate lines of one stats snapshot."""
        outside = [f"{format_bytes(s.swapped_bytes)} swapped to host"] if s.swapped_bytes else []
        if s.prefill_cache_bytes:
            outside.append(f"{format_bytes(s.prefill_cache_bytes)} held mid-prefill")
        self.query_one("#kv", Static).update(Content.from_markup(
            "[b]KV cache[/b]  $alloc allocated · $used used\n[dim]padding (empty cells)[/] $pad of $rows × $seq tokens"
            + (" [dim]· budget[/] $budget" if s.kv_budget_bytes else "") + ("\n$outside" if outside else ""),
            alloc=format_bytes(s.kv_cache_bytes), used=format_bytes(s.kv_used_bytes), pad=format_pct(s.padding_fraction),
            rows=s.batch_size, seq=s.seq_len, budget=format_bytes(s.kv_budget_bytes), outside=" · ".join(outside)))
        self.query_one("#prefix", Static).update(prefix_cache_line(s))
        size = f"{s.batch_size}/{self.max_batch_size}" if self.max_batch_size else str(s.batch_size)
        self.query_one("#batch", Static).update(Content.from_markup(
            "[b]batch[/b] $size · [b]queue[/b] $queue · $steps steps/s\n[b]$tps[/b] tok/s out [dim]· peak $peak[/]",
            size=size, queue=s.queue_depth, steps=format_rate(s.decode_steps_per_s),
            tps=format_rate(s.output_tokens_per_s), peak=format_rate(max(self.history))))
        self.query_one("#tokens", Sparkline).data = list(self.history)
        self._show_rows(s)

    def _show_rows(self, s: EngineStats) -> None:
        """Running rows in batch order, then waiting ones; cells update in place while the order holds."""
        table = self.query_one("#rows", DataTable)
        wanted = {r.request_id: self._cells(r) for r in (*s.rows, *s.waiting)}
        if list(wanted) != [key.value for key in table.rows]:
            table.clear()
            for key, cells in wanted.items():
                table.add_row(*cells, key=key)
            return
        for key, cells in wanted.items():
            for (_, column, _), cell in zip(COLUMNS, cells):
                if table.get_cell(key, column) != cell:
                    table.update_cell(key, column, cell)

    def _cells(self, row: RowStats) -> tuple[Text, ...]:
        try:
            label, kind = self._describe(row.request_id)
        except Exception as exc:
            self.log.warning(f"LivePanel: describe({row.request_id!r}) failed: {exc!r}")
            label, kind = default_describe(row.request_id)
        if len(label) > LABEL_WIDTH:
            label = label[:LABEL_WIDTH - 1] + "…"
        style = "dim" if row.state in ("waiting", "prefilling", "swapped") else ""  # queued rows recede behind the batch
        words = (label, kind, PRIORITY_SHORT.get(row.priority, row.priority), row.state)
        numbers = (row.context_len, row.generated)
        return (*(Text(w, style=style) for w in words), *(Text(str(n), style=style, justify="right") for n in numbers))
