"""One chute instance as the miner sees it: what to run (``InstanceSpec``), its live state
(``Instance``, ``State``) and the client that reaches it.

The data half of ``miner.instances`` (whose ``InstanceManager`` starts, supervises and routes
to these); kept apart so the manager's module holds the behaviour only.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import aiohttp

from canopy.image_environment import ImageEnvironment
from miner.containers import InstanceContainer
from miner.processes import ChildProcess
from miner.sandboxing import InstanceSandbox
from protocol.graval.devices import DeviceSpec

#: where an instance runs when not as a plain process: bubblewrap or the chute's container
Confinement = InstanceSandbox | InstanceContainer
class State(str, Enum):
    STARTING = "starting"
    READY = "ready"
    CHECKING = "checking"  # a request to it failed at the connection: no new requests until checked
    BACKOFF = "backoff"  # waiting to restart after a failure
    STOPPED = "stopped"


@dataclass(frozen=True)
class InstanceSpec:
    """What to run: one instance of chute ``ref`` on ``devices``.

    ``revision``: the sha256 of the code bundle it runs ("" when unknown); ``cwd``: its
    working directory (a registry chute's unpacked bundle; None: the manager's);
    ``pinned``: a hosting-file chute, which the autoscaler never stops; ``environment``: what
    its image pip-installs and sets (``miner.environments`` builds it); ``egress``: the chute
    declared ``allow_external_egress`` (a sandboxed instance then reaches the internet);
    ``dockerfile``: its image, which the container runtime builds."""

    chute_id: str
    name: str
    ref: str
    devices: tuple[DeviceSpec, ...] = ()
    concurrency: int = 1
    concurrency_override: bool = False  # pass --concurrency (the hosting config overrides the chute's)
    revision: str = ""
    cwd: str | None = None
    pinned: bool = False
    environment: ImageEnvironment = field(default_factory=ImageEnvironment, hash=False)
    egress: bool = False
    dockerfile: str = ""  # its image, for the container runtime


class Instance:
    """One supervised instance process and its live counters."""

    def __init__(self, spec: InstanceSpec, instance_id: str, log_path: Path) -> None:
        self.spec = spec
        self.id = instance_id
        self.log_path = log_path
        self.port: int | None = None
        self.url = ""
        self.session: aiohttp.ClientSession | None = None  # a sandboxed instance's own (its Unix socket)
        self.sandbox: Confinement | None = None  # a confined start's (bubblewrap or container) folder, caps, network
        self.process: ChildProcess | None = None
        self.state = State.STARTING
        self.in_flight = 0
        self.served = 0
        self.starts = 0
        self.restarts = 0
        self.cold_start_s: float | None = None  # the latest spawn-to-ready time
        self.ready_since: float | None = None
        self.last_error = ""
        self.failures: deque[str] = deque(maxlen=10)  # why it was restarted, latest last
        self.last_used = time.monotonic()  # the idle clock: a request taken or ended, or ready
        self.draining = False  # out of routing for good: finishing its in-flight requests
        self._halt = False  # stop the process now (drain's end)
        self._task: asyncio.Task[None] | None = None
        self._poke = asyncio.Event()
        self._first_outcome = asyncio.Event()  # set once the first start attempt is decided

    @property
    def available(self) -> bool:
        return self.state is State.READY and not self.draining and self.in_flight < self.spec.concurrency

    @property
    def ready(self) -> bool:
        """Ready and in routing (a draining instance is not)."""
        return self.state is State.READY and not self.draining

    def idle_s(self, now: float | None = None) -> float:
        """Seconds since its last request (0 while one is in flight)."""
        return 0.0 if self.in_flight else max(0.0, (time.monotonic() if now is None else now) - self.last_used)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def cuda_visible_devices(self) -> str:
        return ",".join(device.uuid for device in self.spec.devices if device.kind == "cuda")

    def __repr__(self) -> str:
        return f"Instance({self.id}, {self.state.value}, port={self.port}, in_flight={self.in_flight})"


def client_session(connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
    """A keep-alive client to instances over ``connector``: no timeout of its own (each request
    sets one), bodies passed through as the instance sent them."""
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False,
                                 skip_auto_headers=("User-Agent",), raise_for_status=False)
