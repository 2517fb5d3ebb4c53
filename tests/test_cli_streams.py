"""`baton` with its standard streams closed, and interrupted while it starts: one clear line on stderr and the
conventional exit status, never a Python traceback (issue #9.6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import chat_cmd, main

ROOT = Path(__file__).resolve().parent.parent


def _baton(shell_redirect: str, *args: str) -> subprocess.CompletedProcess:
    """Run `python -m app.cli ARGS` under bash with a redirection such as `<&-` (stdin closed)."""
    command = " ".join([sys.executable, "-m", "app.cli", *args]) + " " + shell_redirect
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_a_conversation_with_stdin_closed_is_one_error_line():
    done = _baton("<&-", "chat", "--model", "random:tiny")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == ("baton: error: standard input is closed: give the question as an argument, "
                                   "or pipe the conversation in")


def test_an_answer_with_stdout_closed_is_one_error_line():
    done = _baton(">&-", "chat", "hi", "--model", "random:tiny", "--max-tokens", "2")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == "baton: error: standard output is closed: nowhere to write the answer"


@pytest.mark.parametrize("failure", [KeyboardInterrupt, "wrapped"])
def test_ctrl_c_while_the_model_loads_is_interrupted_not_a_traceback(monkeypatch, capsys, failure):
    """Ctrl-C inside transformers' lazy imports can surface as another exception whose context is the
    KeyboardInterrupt (seen: `ModuleNotFoundError: Could not import module 'AttentionInterface'`)."""
    def interrupted_load(config):
        if failure is KeyboardInterrupt:
            raise KeyboardInterrupt
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise ModuleNotFoundError("Could not import module 'AttentionInterface'") from exc

    monkeypatch.setattr(chat_cmd, "start_engine", interrupted_load)
    assert main(["chat", "hi", "--model", "random:tiny"]) == 130
    assert capsys.readouterr().err == "baton: interrupted\n"
