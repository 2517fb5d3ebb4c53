"""The TUI's start (issue #10.2): the first frame comes before torch is imported, and the prompt works while
the model loads. Each test runs a fresh interpreter (this one has torch loaded already, by `conftest.py`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_first_frame_comes_before_torch_and_a_message_typed_meanwhile_is_answered(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "tui_start_probe.py"), str(tmp_path / "baton.db")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={"BATON_CONFIG_DIR": str(tmp_path / "config"), "PATH": "/usr/bin:/bin",
                               "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(next(x for x in done.stdout.splitlines() if x.startswith("REPORT ")).removeprefix("REPORT "))
    assert not report["torch_after_import"] and not report["torch_after_app"], report
    assert not report["engine_after_app"] and not report["engine_at_first_frame"], report
    assert report["status_at_first_frame"].startswith("Loading random:tiny…"), report
    assert report["first_frame_shows_loading"], report
    assert not report["torch_at_first_frame"] and not report["torch_while_typing"], report
    assert report["torch_importers"] == ["baton-model-load"], report  # the loader's thread, never the UI's
    assert report["stored"][0] == ["user", "hello"] and report["stored"][1][1] in ("stop", "length"), report
    assert report["engine_stopped"], report  # the app shut down the engine it made
