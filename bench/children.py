"""Child processes of a benchmark: the same script re-run with ``--role NAME --config FILE``.

The validator benchmark's simulated miners, store prefill and verifier-cost measurement
run this way, each in its own process, so that the measured process pays for none of their
CPU or memory. A role either runs to the end and prints its
result as one JSON object on its last stdout line (``run_child``), or serves until its
stdin closes after announcing itself in a first JSON line (``Child``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def write_config(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config))
    return path


def spawn(script: Path, role: str, config_path: Path, **popen: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), "--role", role, "--config", str(config_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True, **popen)


def run_child(script: Path, role: str, config_path: Path, env: dict[str, str] | None = None) -> dict:
    """Run a role to the end; its last stdout line is a JSON object."""
    process = spawn(script, role, config_path, env=env)
    output, _ = process.communicate()
    lines = [line for line in output.splitlines() if line.strip()]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"the {role} process failed (exit {process.returncode}): {output[-2000:]}")
    return json.loads(lines[-1])


class Child:
    """A serving role: its first stdout line is a JSON object; it stops when its stdin closes."""

    def __init__(self, script: Path, role: str, config_path: Path) -> None:
        self.role = role
        self.process = spawn(script, role, config_path, stdin=subprocess.PIPE)
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {role} process failed to start (exit {self.process.wait()})")
        self.hello = json.loads(line)

    def close(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            end(self.process, timeout)


def end(process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Close a serving child's stdin (its signal to stop) and wait for it; kill it past ``timeout``."""
    if process.stdin is not None and not process.stdin.closed:
        process.stdin.close()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
