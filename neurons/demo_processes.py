"""The demo's processes: where they keep their files, how they start, and how they stop.

The demo runs the miners, the API and, once the first weights are set, the validator as
processes; ``--keep`` leaves them running and records them in ``DemoPaths.pids``;
``./run.sh demo stop`` stops them. Every process runs in its
own session (process group) and logs to ``DemoPaths.logs``; stopping sends SIGINT (the
neurons shut down cleanly: chute instances stopped, queued rows written, credit leases
given back), then SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from canopy.templates.model_files import models_root

REPO = Path(__file__).resolve().parent.parent
NETUID = 1
STOP_GRACE_S = 10.0
# CPU pseudo-devices, no wandb run, the registry announced every second (deploys show at once)
VALIDATOR_FLAGS = ("--graval.allow_cpu", "--wandb.mode", "disabled", "--validator.announce_s", "1")


@dataclass
class DemoPaths:
    home: Path

    @property
    def chain(self) -> Path:
        return self.home / "devnet.sqlite"

    @property
    def wallets(self) -> Path:
        return self.home / "wallets"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def validator_db(self) -> Path:
        return self.home / "validator.sqlite"

    @property
    def database_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.validator_db}"

    @property
    def pids(self) -> Path:
        """The processes a ``--keep`` demo left running (``stop_kept`` reads it)."""
        return self.home / "pids.json"


def free_port(preferred: int = 0) -> int:
    """``preferred`` when it is free, else any free loopback port."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(paths: DemoPaths, name: str, command: list[str]) -> subprocess.Popen:
    """A neuron process of the demo, logging to ``logs/NAME.log``."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    log = open(paths.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    env = {**os.environ, "CANOPY_HOME": str(paths.home), "PYTHONUNBUFFERED": "1",
           "CANOPY_MODEL_CACHE": str(models_root())}  # one converted model for every run
    return subprocess.Popen([sys.executable, *command], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                            start_new_session=True)


def devnet_flags(paths: DemoPaths, wallet: str, hotkey: str) -> list[str]:
    return ["--network", "devnet", "--netuid", str(NETUID), "--devnet.path", str(paths.chain),
            "--wallet.name", wallet, "--wallet.hotkey", hotkey, "--wallet.path", str(paths.wallets)]


def start_api(paths: DemoPaths, port: int) -> subprocess.Popen:
    """The public API on the validator's hotkey, sharing the validator's store."""
    return spawn(paths, "api", ["-m", "neurons.api", *devnet_flags(paths, "owner", "validator"),
                                 "--axon.ip", "127.0.0.1", "--axon.port", str(port),
                                 "--database_url", paths.database_url, "--api.refresh_s", "2"])


def start_validator(paths: DemoPaths) -> subprocess.Popen:
    """The validator neuron, going on from the store the demo's own validator steps left."""
    return spawn(paths, "validator", ["-m", "neurons.validator", *devnet_flags(paths, "owner", "validator"),
                                      *VALIDATOR_FLAGS, "--database_url", paths.database_url])


def _signal(pid: int, signum: int, *, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a child of ours that exited but was not reaped yet is not alive
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # no /proc (macOS): ask ps
        found = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
        return found.stdout


def is_demo_process(pid: int, paths: DemoPaths) -> bool:
    """``pid`` runs and is one of this demo's (its command line names the demo's folder), not
    a process that took the number since (after a reboot, say)."""
    return _alive(pid) and f"{paths.home}{os.sep}" in _command_line(pid)


def stop_pids(pids: list[int], grace_s: float = STOP_GRACE_S) -> None:
    """SIGINT each process (it stops its own children), wait up to ``grace_s`` for all, then
    SIGKILL the process groups of those still running."""
    for pid in pids:
        _signal(pid, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL, group=True)


def stop(processes: list[subprocess.Popen]) -> None:
    stop_pids([process.pid for process in processes if process.poll() is None])
    for process in processes:
        try:
            process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass


def keep(paths: DemoPaths, processes: dict[str, subprocess.Popen], api_url: str) -> None:
    """Record the running processes so ``stop_kept`` (``./run.sh demo stop``) can end them."""
    paths.home.mkdir(parents=True, exist_ok=True)
    paths.pids.write_text(json.dumps({"api_url": api_url, "processes": {
        name: process.pid for name, process in processes.items() if process.poll() is None}}, indent=2))


def stop_kept(paths: DemoPaths) -> list[str]:
    """Stop a ``--keep`` demo's processes; the names stopped (none: nothing was kept)."""
    if not paths.pids.exists():
        return []
    try:
        kept = json.loads(paths.pids.read_text())["processes"]
    except (ValueError, KeyError, TypeError):
        paths.pids.unlink()
        return []
    running = {name: pid for name, pid in kept.items() if isinstance(pid, int) and is_demo_process(pid, paths)}
    stop_pids(list(running.values()))
    paths.pids.unlink()
    return sorted(running)
