"""A `baton serve` subprocess for tests that drive it over HTTP (`tests/test_server.py`,
`tests/test_remote.py`): `ServerProcess` on a free loopback port, and `request`, a raw HTTP request; `wait_for`,
a bounded wait for what another process does (also `tests/test_engine_process.py`)."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import openai

REPO = Path(__file__).resolve().parents[1]
MODEL = "random:tiny"
KEY = "test-key-3f9a"
MAX_BODY = 64 * 1024
START_TIMEOUT_S = 240  # a loaded 2-core machine takes a while to import torch and transformers
WAIT_S = 120
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colors."}]


def wait_for(condition, what: str, timeout: float = WAIT_S):
    """Poll `condition()` until it is truthy and return its value; AssertionError after `timeout` s (a bound for
    something stuck, not a speed target)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


class ServerProcess:
    """A `baton serve` subprocess on a free loopback port; `url` waits until it answers `/health`."""

    def __init__(self, tmp: Path):
        self.tmp, self.db = tmp, tmp / "baton.db"
        self.proc: subprocess.Popen | None = None
        self._url: str | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.log = self.tmp / f"server-{self.starts}.log"
        self._url = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--model", MODEL, "--device", "cpu", "--port", "0",
             "--db", str(self.db), "--api-key", KEY, "--max-batch-size", "4", "--max-body-size", str(MAX_BODY),
             "--drain-timeout", "1"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.log.open("w"),
            env={**os.environ, "OMP_NUM_THREADS": "1", "BATON_API_KEY": ""})

    def ensure_running(self) -> ServerProcess:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        return self

    @property
    def url(self) -> str:
        if self._url is None:
            deadline = time.monotonic() + START_TIMEOUT_S
            while (m := re.search(r"on (http://\S+) ", self.log.read_text())) is None:
                assert self.proc.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
            self._url = m.group(1)
            while request(self._url, "GET", "/health", key=None)[0] != 200:
                assert time.monotonic() < deadline, "the server did not become healthy"
                time.sleep(0.05)
        return self._url

    def client(self, key: str | None = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "none", max_retries=0, timeout=WAIT_S)

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(WAIT_S)

    def kill(self) -> None:
        """End the server if it still runs (a module fixture's teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def request(url: str, method: str, path: str, body: bytes | dict | None = None, key: str | None = KEY,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A raw HTTP request: `(status, decoded JSON body or text)`."""
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=WAIT_S)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    try:
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw.decode()

