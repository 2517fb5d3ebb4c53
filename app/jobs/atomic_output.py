"""`atomic_output`: an output file that appears whole or not at all (`baton batch -o`, `baton jobs export -o`,
the TUI's job export). No front end: a destination that cannot be written is an `OutputFileError`, which the
CLI reports as a usage error and the TUI shows in its dialog."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


class OutputFileError(ValueError):
    """The output file cannot be written (a folder, a missing or read-only folder); the message names it."""


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[IO[str]]:
    """A text file that replaces `path` only when the block completes; on any exception it is removed.

    The temporary file is created up front (so an unwritable destination fails before the model loads) in the
    destination's folder (so the final rename is atomic), and gets the permissions of a newly created file.

    Raises:
        OutputFileError: `path` is a folder, or its folder cannot be written.
    """
    if path.is_dir():
        raise OutputFileError(f"cannot write the output file {str(path)!r}: it is a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputFileError(f"cannot write the output file {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
