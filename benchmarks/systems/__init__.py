"""The systems the serving benchmark compares, all over one loaded model (same weights, dtype, device).

Each is `run(loaded, requests, opts) -> SystemRun`: it warms up untimed, starts the clock, serves every request
at its arrival time and returns per-request token times plus its own measurements (see each module).
"""

from __future__ import annotations

from . import baton, hf_cb, orca, sequential, static
from .common import RunOptions

SYSTEMS = {
    "sequential": sequential.run,
    "static": static.run,
    "orca": orca.run_padded,
    "orca-packed": orca.run_packed,
    "hf-cb": hf_cb.run,
    "baton": baton.run,
    "baton-no-prefix-cache": baton.run_no_prefix_cache,
}

__all__ = ["SYSTEMS", "RunOptions"]
