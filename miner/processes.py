"""Processes: how the miner spawns a chute instance process, and the OS-level helpers around it.

The seam between ``miner.instances`` (which supervises instances) and the operating
system: the launcher that runs ``canopy.instance`` after asking the kernel for SIGTERM when
the miner dies (``PR_SET_PDEATHSIG`` on Linux, so a killed miner leaves no orphans holding
GPUs or ports), the handle the supervisor polls (``ChildProcess``), signals to a process
group, port probing, the restart backoff, and the one way the miner runs a build to its end
with its progress in the log (``run_logged``: a chute's pip environment, a chute's image).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections import deque
from typing import Mapping, Sequence

from loguru import logger

# Runs canopy.instance as `python -m` would, after asking for SIGTERM when the miner dies.
LAUNCHER = """\
# canopy chute instance, launched by miner.instances
import os, runpy, signal, sys
if sys.platform.startswith("linux"):
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    if os.getppid() != int(os.environ.get("CANOPY_MINER_PID", os.getppid())):
        sys.exit(3)  # the miner died before prctl took effect
runpy.run_module("canopy.instance", run_name="__main__", alter_sys=True)
"""


class ChildProcess:
    """An instance process as the supervisor sees it: ``pid``, ``returncode``, ``await wait()``.

    Spawned with ``subprocess.Popen`` (CPython's fork/exec child runs no Python and takes
    no lock before exec) rather than the event loop's subprocess support: under uvloop,
    spawning while a GraVal proof ran numpy in a thread was seen to hang the miner for
    good. Exit is noticed by polling, which costs nothing at this rate.
    """

    POLL_S = 0.05

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen
        self.pid = popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    async def wait(self) -> int:
        while (code := self.popen.poll()) is None:
            await asyncio.sleep(self.POLL_S)
        return code


def exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def backoff_delay(failures: int, base_s: float, cap_s: float) -> float:
    """Seconds before restart number ``failures + 1`` in a row: base, 2 base, 4 base ... up to cap."""
    return min(cap_s, base_s * (2 ** min(failures, 32)))


def signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_logged(command: Sequence[str], *, label: str, what: str, env: Mapping[str, str], timeout_s: float,
               progress: tuple[str, ...] = (), error: type[RuntimeError] = RuntimeError) -> None:
    """Run ``command`` to its end (blocking: call it through ``asyncio.to_thread``), reading its
    output line by line: a line starting with one of ``progress`` is logged as ``LABEL: line``.
    ``error`` naming ``label``, ``what`` ran and the output's last lines when it fails; past
    ``timeout_s`` it is killed and ``error`` says so. ``subprocess.Popen``, as for instances
    (``ChildProcess``), not the event loop's subprocess support."""
    process = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env=dict(env), text=True, errors="replace")
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        process.kill()

    timer = threading.Timer(timeout_s, expire)
    timer.start()
    tail: deque[str] = deque(maxlen=6)
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip()
            tail.append(line)
            if line.startswith(progress):
                logger.info("{}: {}", label, line[:300])
        code = process.wait()
    finally:
        timer.cancel()
    if expired.is_set():
        raise error(f"{label}: {what} did not finish within {timeout_s:g}s")
    if code != 0:
        raise error(f"{label}: {what} failed ({exit_text(code)}): " + " | ".join(tail))
