"""What a benchmark does after its run, shared by `multiturn.py` and `shared_prefix.py`: run it (or read a saved
result with `--render`), write `<out-dir>/<date>-<device>-<name>[-smoke|-<tag>].json`, print its Markdown, and
with `--update-docs` put that Markdown in its generated section of `docs/benchmarks.md` (`docs_section.py`);
and `relative`, the repo-relative path a result records and the docs quote."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def relative(path: Path) -> str:
    """`path` relative to the repository when it is inside it (what results and docs quote), else as given."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run with `n` torch threads (None: leave them), restoring the number after (tests call `main` in-process)."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def result_stem(result: dict, args: argparse.Namespace, name: str) -> Path:
    """`<out-dir>/<date>-<device>-<name>`, with `-smoke` (`--smoke`) or `-<tag>` (`--tag`) after it."""
    suffix = "-smoke" if args.smoke else (f"-{args.tag}" if args.tag else "")
    return args.out_dir / f"{result['date']}-{result['device']}-{name}{suffix}"


def run_and_report(args: argparse.Namespace, argv: list[str], name: str, section: str,
                   run: Callable[[argparse.Namespace, list[str]], dict], markdown: Callable[[dict], str],
                   extras: Callable[[dict, Path], None] | None = None) -> int:
    """A benchmark's `main` after parsing: run it (`args.threads` torch threads) or read `args.render`, write the
    result JSON (`result["json"]` its relative path; `extras(result, stem)` may add files first, e.g. a plot),
    print `markdown(result)` and, with `args.update_docs`, write it into the `section` of docs/benchmarks.md.

    Returns:
        0 (the exit status).
    Raises:
        ValueError: docs/benchmarks.md lacks the section's markers (`docs_section.replace_section`).
    """
    if args.render is not None:
        result = json.loads(args.render.read_text())
    else:
        with torch_threads(args.threads):
            result = run(args, argv)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        stem = result_stem(result, args, name)
        path = stem.with_name(stem.name + ".json")
        result["json"] = relative(path)
        if extras is not None:
            extras(result, stem)
        path.write_text(json.dumps(result, indent=2))
    text = markdown(result)
    print(text)
    if args.update_docs:
        from .docs_section import replace_section

        print(f"\nupdated {replace_section(section, text)}")
    if args.render is None:
        print(f"\nwrote {result['json']}")
    return 0

