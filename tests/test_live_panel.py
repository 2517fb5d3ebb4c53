"""LivePanel: fed by a real engine on `random:tiny`, by `None` (engine not running), and a snapshot of fixed numbers."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time

import pytest
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Sparkline, Static

from app.tui.widgets.format import format_bytes, format_pct, format_rate, short_id
from app.tui.widgets.live_panel import LivePanel
from backend import EngineStats, Priority, RowStats, SamplingParams
from backend.memory import DeviceMemory, read_device_memory
from themes import register_themes

LABELS = {
    "chat-rome": ("chat: Trip to Rome", "chat"),
    "chat-markup": ("chat: [b]markup[/]", "chat"),  # titles are user text: shown literally
    "job-12-0": ("job: nightly #12", "job"),
    "job-12-1": ("job: nightly #12", "job"),
    "job-12-2": ("job: nightly #12", "job"),
}


class PanelApp(App):
    """A bare app holding one LivePanel, in Baton's default theme."""

    def __init__(self, panel: LivePanel):
        super().__init__()
        self.panel = panel

    def on_mount(self) -> None:
        register_themes(self)
        self.theme = "baton-dark"

    def compose(self) -> ComposeResult:
        yield self.panel


def text(panel: LivePanel, selector: str) -> str:
    return str(panel.query_one(selector, Static).content)


def column(table: DataTable, key: str) -> list[str]:
    return [table.get_cell(row, key).plain for row in table.rows]


async def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the engine"
        await asyncio.sleep(0.01)


@pytest.fixture
def engine(make_engine):
    """A running engine on random:tiny with 4 rows; conftest's `make_engine` shuts it down after the test."""
    return make_engine(max_batch_size=4)


async def test_panel_shows_the_real_batch_then_empties(engine):
    seen: list[EngineStats] = []

    def stats() -> EngineStats:  # remember exactly what the panel was shown
        seen.append(engine.stats())
        return seen[-1]

    panel = LivePanel(stats, lambda: read_device_memory(engine.model.device), LABELS.__getitem__,
                      interval=60, max_batch_size=4)
    params = SamplingParams(max_tokens=1900, ignore_eos=True)

    async def consume(rid: str) -> None:
        priority = Priority.INTERACTIVE if rid.startswith("chat") else Priority.BATCH
        async for _ in engine.generate(f"prompt for {rid}", params, priority=priority, request_id=rid):
            pass

    async with PanelApp(panel).run_test(size=(70, 30)) as pilot:
        tasks = [asyncio.create_task(consume(rid)) for rid in LABELS]
        await wait_until(lambda: (engine.stats().batch_size, engine.stats().queue_depth) == (4, 1))
        panel.refresh_now()
        await pilot.pause()
        s = seen[-1]
        table = panel.query_one("#rows", DataTable)
        running, waiting = [r.request_id for r in s.rows], [r.request_id for r in s.waiting]
        assert table.row_count == s.batch_size + s.queue_depth == 5
        assert [key.value for key in table.rows] == running + waiting  # waiting rows after the running ones
        assert column(table, "request") == [LABELS[rid][0] for rid in running + waiting]
        assert column(table, "kind") == [LABELS[rid][1] for rid in running + waiting]
        assert column(table, "state") == ["running"] * 4 + ["waiting"]
        assert column(table, "generated") == [str(r.generated) for r in (*s.rows, *s.waiting)]
        assert column(table, "context") == [str(r.context_len) for r in (*s.rows, *s.waiting)]
        assert set(column(table, "priority")) <= {"inter", "batch"}

        kv = text(panel, "#kv")
        assert s.kv_cache_bytes > 0 and s.kv_used_bytes > 0
        assert re.match(r"KV cache +[1-9][\d.]* (B|KiB|MiB|GiB) allocated · [1-9][\d.]* (B|KiB|MiB|GiB) used", kv)
        assert format_bytes(s.kv_cache_bytes) in kv and format_pct(s.padding_fraction) in kv
        assert text(panel, "#memory").startswith("process RSS")  # CPU: this process, not a GPU
        assert "GPU" not in text(panel, "#memory") + text(panel, "#device")
        assert "batch 4/4 · queue 1" in text(panel, "#batch")
        assert "random:tiny" in text(panel, "#device")

        await wait_until(lambda: engine.stats().num_decode_steps > s.num_decode_steps + 3)
        panel.refresh_now()  # same rows, new counts: cells update in place
        await pilot.pause()
        later = seen[-1]
        assert [key.value for key in table.rows] == [r.request_id for r in (*later.rows, *later.waiting)]
        assert column(table, "generated") == [str(r.generated) for r in (*later.rows, *later.waiting)]
        assert later.rows[0].generated > s.rows[0].generated

        for rid in LABELS:
            engine.cancel(rid)
        await asyncio.gather(*tasks)
        await wait_until(lambda: (engine.stats().batch_size, engine.stats().queue_depth) == (0, 0))
        panel.refresh_now()
        await pilot.pause()
        assert table.row_count == 0
        assert "batch 0/4 · queue 0" in text(panel, "#batch")


async def test_not_running_state_when_stats_is_none():
    panel = LivePanel(lambda: None, lambda: read_device_memory("cpu"), interval=60)
    async with PanelApp(panel).run_test() as pilot:
        await pilot.pause()
        assert panel.has_class("-idle")
        status = panel.query_one("#status", Static)
        assert status.display and "engine not running" in str(status.content)
        assert not panel.query_one("#engine").display  # no stale batch, KV or rates
        assert text(panel, "#memory").startswith("process RSS")  # memory is still worth showing while loading


async def test_failing_sources_and_default_labels():
    rid = "0123456789abcdef0123456789abcdef"
    good = EngineStats(rows=(RowStats(rid, "agent", "running", 12, 3),))
    calls = {"memory": 0}

    def broken_memory():
        calls["memory"] += 1
        raise RuntimeError("NVML went away")

    source = iter([good, RuntimeError("engine gone")])

    def stats():
        item = next(source)
        if isinstance(item, Exception):
            raise item
        return item

    panel = LivePanel(stats, broken_memory, interval=60)
    async with PanelApp(panel).run_test() as pilot:
        await pilot.pause()
        table = panel.query_one("#rows", DataTable)
        assert column(table, "request") == [short_id(rid)] and column(table, "kind") == ["request"]
        assert panel.has_class("-no-memory") and not panel.has_class("-idle")
        panel.refresh_now()  # stats() raises now: shown as not running, the app keeps going
        await pilot.pause()
        assert panel.has_class("-idle") and calls["memory"] == 2


async def test_timer_refreshes_and_keeps_a_bounded_history():
    stats = EngineStats(output_tokens_per_s=12.5)
    calls = []
    panel = LivePanel(lambda: calls.append(1) or stats, lambda: None, interval=0.02)
    async with PanelApp(panel).run_test() as pilot:
        deadline = time.monotonic() + 20
        while len(calls) < 3:
            assert time.monotonic() < deadline, "the timer never fired"
            await pilot.pause(0.02)
        assert len(panel.history) == LivePanel.HISTORY and panel.history[-1] == 12.5
        assert list(panel.query_one(Sparkline).data)[-1] == 12.5
        panel.display = False  # toggled off: the timer stops polling
        await pilot.pause(0.05)
        hidden_calls = len(calls)
        await pilot.pause(0.2)
        assert len(calls) == hidden_calls


async def test_cuda_memory_is_labelled_gpu_memory():
    nvml = DeviceMemory("cuda:0", "NVIDIA H100 80GB HBM3", "cuda", 30 * 2 ** 30, 80 * 2 ** 30, 37.0, 2 ** 30,
                        12 * 2 ** 30, 14 * 2 ** 30, "nvml")
    fallback = dataclasses.replace(nvml, utilization_pct=None, source="torch.cuda")
    readings = iter([nvml, fallback])
    panel = LivePanel(lambda: None, lambda: next(readings), interval=60)
    async with PanelApp(panel).run_test() as pilot:
        await pilot.pause()
        assert text(panel, "#memory") == ("GPU memory  30.0 GiB / 80.0 GiB · util 37%\n"
                                          "torch  12.0 GiB allocated · 14.0 GiB reserved")
        assert text(panel, "#device") == "NVIDIA H100 80GB HBM3 (cuda:0)"
        panel.refresh_now()
        assert text(panel, "#memory").startswith("GPU memory  30.0 GiB / 80.0 GiB · util – (via torch.cuda)")


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="interval"):
        LivePanel(lambda: None, lambda: None, interval=0)


def test_formatting_helpers():
    assert [format_bytes(n) for n in (0, 1023, 1536, 812 * 2 ** 20, 80 * 2 ** 30)] == \
        ["0 B", "1023 B", "1.5 KiB", "812.0 MiB", "80.0 GiB"]
    assert (format_pct(0.125), format_pct(0.001), format_pct(0.0)) == ("12%", "<1%", "0%")
    assert (format_rate(37.46), format_rate(12345.6)) == ("37.5", "12,346")
    with pytest.raises(ValueError):
        format_bytes(-1)


# ----------------------------------------------------------------------------------------- snapshot
MiB, GiB = 2 ** 20, 2 ** 30
FIXED_MEMORY = DeviceMemory("cpu", "AMD EPYC 7B13", "cpu", 812 * MiB, 31 * GiB, None, 812 * MiB, 0, 0, "process")
FIXED_STATS = EngineStats(
    rows=(RowStats("a" * 32, "interactive", "running", 412, 96), RowStats("b" * 32, "batch", "running", 388, 300),
          RowStats("c" * 32, "agent", "running", 201, 17)),
    waiting=(RowStats("d" * 32, "batch", "swapped", 350, 41),),
    kv_cache_bytes=18 * MiB, kv_used_bytes=11 * MiB, kv_budget_bytes=8 * GiB, swapped_bytes=4 * MiB,
    padding_fraction=0.2325, seq_len=412, num_decode_steps=5120,
    decode_steps_per_s=41.5, output_tokens_per_s=124.5, device="cpu", model="smollm2-135m-instruct")
FIXED_LABELS = {"a" * 32: ("chat: Trip to Rome", "chat"), "b" * 32: ("job: nightly #12", "job"),
                "c" * 32: ("agent: refactor the storage layer", "agent")}
TOKENS_PER_S = [0, 30, 62, 95, 118, 124.5, 131, 127, 120, 124.5, 126, 124.5]  # one value per refresh


def snapshot_app() -> PanelApp:
    """The panel on a fake, fixed source (a snapshot needs fixed numbers; a live engine's rates, RSS and
    timings differ every run). The tokens/s values step through TOKENS_PER_S, one per refresh."""
    series = iter(TOKENS_PER_S)
    describe = lambda rid: FIXED_LABELS.get(rid, (short_id(rid), "request"))  # noqa: E731
    stats = lambda: dataclasses.replace(FIXED_STATS, output_tokens_per_s=next(series))  # noqa: E731
    return PanelApp(LivePanel(stats, lambda: FIXED_MEMORY, describe, interval=3600, max_batch_size=8))


def test_snapshot_cpu_panel(snap_compare):
    """The panel on the CPU with fixed EngineStats and DeviceMemory objects (see `snapshot_app`)."""

    async def fill_history(pilot) -> None:  # mount did the first refresh; the rest of the series now
        for _ in TOKENS_PER_S[1:]:
            pilot.app.panel.refresh_now()
        await pilot.pause()

    assert snap_compare(snapshot_app(), terminal_size=(66, 26), run_before=fill_history)


def test_snapshot_not_running(snap_compare):
    """No engine yet (stats None) with a fixed CPU memory reading."""
    assert snap_compare(PanelApp(LivePanel(lambda: None, lambda: FIXED_MEMORY, interval=3600)), terminal_size=(66, 12))


def test_the_prefix_cache_line_shows_its_size_hit_rate_and_the_chat_target():
    from app.tui.widgets.live_panel import prefix_cache_line

    off = EngineStats()
    assert prefix_cache_line(off).plain == "prefix cache off"
    on = dataclasses.replace(off, prefix_cache_bytes=120 * 2**20, prefix_cache_capacity_bytes=2 * 2**30,
                             counters={"num_prefix_cache_queries": 400, "num_prefix_cache_hits": 300})
    assert prefix_cache_line(on).plain == "prefix cache 120.0 MiB of 2.0 GiB · 75% hit"
    tiers = dataclasses.replace(on, prefix_cache_host_bytes=2**30, slo_background_cap=5)
    assert prefix_cache_line(tiers).plain == ("prefix cache 120.0 MiB + 1.0 GiB host of 2.0 GiB · 75% hit\n"
                                              "chat target ≤ 5 background rows")
    between_chats = dataclasses.replace(on, slo_forward_ms=1350.0)  # an engine detail, not a line of the panel
    assert prefix_cache_line(between_chats).plain == "prefix cache 120.0 MiB of 2.0 GiB · 75% hit"
