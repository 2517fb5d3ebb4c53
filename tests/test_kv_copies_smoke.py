"""`benchmarks/kv_copies.py --smoke` runs and records what it measured (no timing is asserted)."""

from __future__ import annotations

import json

from benchmarks import kv_copies


def test_the_kv_copies_benchmark_writes_its_result(tmp_path, capsys):
    assert kv_copies.main(["--smoke", "--out-dir", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*-cpu-kv-copies-smoke.json")
    result = json.loads(path.read_text())
    grow, swap = result["grow"], result["swap"]
    assert len(grow["insert_ms"]) == kv_copies.SMOKE["rows"] + 1 and grow["relayouts"] >= 1
    # a CPU batch holds every row from the start, and as many again for parked rows (`backend/row_parking.py`)
    assert grow["buffers"][0] == 2 * kv_copies.SMOKE["max_batch_size"]
    assert len(swap["fresh_ms"]) == len(swap["swap_space_ms"]) == kv_copies.SMOKE["rounds"]
    assert swap["swap_space_allocations"] == kv_copies.SMOKE["swap_rows"]  # later rounds reuse the first's
    assert "| swap out, swap space |" in capsys.readouterr().out
