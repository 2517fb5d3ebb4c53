"""The garbage collector in a long-running engine or front-end process: what was loaded at start-up is frozen.

CPython's collector scans every tracked object of a generation it collects; a full (generation 2) collection
runs after enough allocations and then walks every object the process holds, among them the hundreds of
thousands that torch, transformers, tokenizers and Textual create at import and load time and keep until the
process exits. Measured on the 2-core CPU (2026-12-04, `benchmarks.tui_priority`'s idle chat through the real
TUI, `gc.callbacks`): four full collections in ~30 s of streaming took 197-360 ms each, and they were the chat's
longest inter-token gaps (ITL max 419 ms against a 75 ms TPOT). `gc.freeze()` (Python docs, "gc — Garbage
Collector interface": move every tracked object to a permanent generation that collections ignore) after
start-up made them 10-97 ms, and the same chat's ITL max 118 ms.

Objects that are frozen and later become unreachable are still freed by reference counting; only reference
cycles among them would stay until `unfreeze_startup_objects()`, so a collection runs first and the front ends
that can close and reopen (the TUI) unfreeze when they close.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Collect, then move every object the process holds now into the collector's permanent generation, so
    later collections scan only what was created after (call once the model and the front end are loaded).

    Returns:
        Objects now frozen (`gc.get_freeze_count()`).
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def unfreeze_startup_objects() -> None:
    """Hand frozen objects back to the collector (a front end that frees what it loaded, e.g. a closed app)."""
    gc.unfreeze()
