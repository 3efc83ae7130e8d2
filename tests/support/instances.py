"""Chute instances in tests: real ``python -m canopy.instance serve`` processes and HTTP calls to them.

``start_instance`` runs one on a free port (the repository root its working directory and
``PYTHONPATH``, so refs like ``tests.canopy.chutes.basic:chute`` load) and waits for the
status asked for; ``get_json`` and ``post`` talk to it with the stdlib client.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from tests.support import ROOT, free_port


def get_json(url: str, timeout: float = 5.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def post(url: str, payload: dict, timeout: float = 10.0) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Instance:
    def __init__(self, process: subprocess.Popen, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log
        self.url = f"http://127.0.0.1:{port}"

    def health(self) -> tuple[int, dict]:
        return get_json(self.url + "/_canopy/health", timeout=2)

    def wait_status(self, wanted: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None and wanted != "exited":
                raise AssertionError(f"instance exited {self.process.returncode}: {self.log.read_text()[-3000:]}")
            try:
                _, body = self.health()
                last = body
                if body.get("status") == wanted:
                    return body
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"instance never reached {wanted!r} (last {last}): {self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextlib.contextmanager
def start_instance(ref: str, tmp_path: Path, *args: str, env: dict | None = None,
                   wait: str | None = "ready") -> Iterator[Instance]:
    port = free_port()
    log = tmp_path / f"instance-{port}.log"
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "canopy.instance", "serve", ref, "--port", str(port), *args],
                                   cwd=ROOT, env=full_env, stdout=sink, stderr=subprocess.STDOUT)
    instance = Instance(process, port, log)
    try:
        if wait:
            instance.wait_status(wait)
        yield instance
    finally:
        instance.stop()

