"""Small formatting helpers for the TUI's numbers (pure functions, no Textual)."""

from __future__ import annotations

__all__ = ["format_bytes", "format_pct", "format_rate", "short_id"]

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(n: int | float) -> str:
    """A byte count in binary units: `"512 B"`, `"1.5 KiB"`, `"812.4 MiB"`, `"79.6 GiB"`.

    Raises:
        ValueError: a negative count.
    """
    if n < 0:
        raise ValueError(f"n: a byte count cannot be negative, got {n}")
    if n < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_pct(fraction: float) -> str:
    """A fraction in [0, 1] as a whole percentage: `0.125 -> "12%"`, `0.004 -> "<1%"` (never rounds 0+ to 0)."""
    if 0 < fraction < 0.005:
        return "<1%"
    return f"{fraction * 100:.0f}%"


def format_rate(per_s: float) -> str:
    """A rate per second with one decimal below 1,000 and thousands grouped above: `"37.5"`, `"1,234"`."""
    return f"{per_s:.1f}" if per_s < 1000 else f"{per_s:,.0f}"


def short_id(request_id: str, length: int = 8) -> str:
    """The first `length` characters of a request id (uuid4 hex ids are unique enough at 8)."""
    return request_id if len(request_id) <= length else request_id[:length] + "…"
