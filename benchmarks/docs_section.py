"""Generated sections of `docs/benchmarks.md`: a benchmark's `--update-docs` replaces the text between its two
markers (`<!-- begin generated: NAME -->` and `<!-- end generated: NAME -->`) with its Markdown, so a later
run refreshes the tables without touching the prose around them."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def markers(name: str) -> tuple[str, str]:
    """The begin and end markers of the generated section `name`."""
    return f"<!-- begin generated: {name} -->", f"<!-- end generated: {name} -->"


def replace_section(name: str, body: str, path: Path = DOCS) -> Path:
    """Put `body` between the markers of section `name` in `path` (the markers stay). Returns `path`.

    Raises:
        ValueError: `path` lacks the markers, or has them out of order or more than once.
    """
    begin, end = markers(name)
    text = path.read_text(encoding="utf-8")
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"{path}: expected one '{begin}' before one '{end}'")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    path.write_text(f"{head}{begin}\n{body.strip()}\n{end}{tail}", encoding="utf-8")
    return path
