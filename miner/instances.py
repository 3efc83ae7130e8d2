"""InstanceManager: the chute instance processes of a miner, and which one takes a request.

Built from ``miner.hosting.HostingPlan`` (one ``InstanceSpec`` per instance), started and
stopped with the miner; a request takes an instance with ``acquire``/``release`` (of one
revision of the chute, or any) and goes over the shared aiohttp ``session``;
``report_failure`` tells it an instance dropped one. The autoscaler (``miner.autoscaler``)
adds instances of registry chutes while it runs (``add``: the bundle's folder is the
working directory, its entry the ref) and removes them with ``drain``: out of routing at
once, its requests in flight finish (up to a timeout), then it stops and is forgotten, and
it is not restarted meanwhile. Each instance keeps an idle clock (``last_used``: a request
taken or ended, or the instance became ready).

Each instance is its own process, in its own process group::

    python -m canopy.instance serve REF --host 127.0.0.1 --port P [--concurrency N] --local-dependencies

(run through ``miner.processes.LAUNCHER``, a few lines of ``-c`` that first ask the kernel
for SIGTERM when the miner dies, so a killed miner leaves no orphans holding GPUs or ports;
``-c`` puts the working directory first on ``sys.path``, where a bundle's entry module is),
with ``CUDA_VISIBLE_DEVICES`` set to the uuids of its GPUs (uuids, not indexes: they mean
the same whatever the miner's own CUDA_VISIBLE_DEVICES; empty for the CPU pseudo-device)
and ``CANOPY_INSTANCE_ID``. Where it runs (``miner.launch``): with ``sandbox`` (the default) in
bubblewrap (``miner.sandboxing``), serving ``--fd`` a Unix socket the miner bound outside
the sandbox instead of a port; with ``containers`` a registry chute in its image (``miner.containers``),
likewise on a socket; an image's pip installs come from its cached environment
(``miner.environments``), whose interpreter then runs the instance.

One supervisor task per instance: pick a free port from the configured range (or a socket), spawn, poll
``GET /_canopy/health`` until 200 (``cold_start_s`` is spawn to ready) or the start
timeout, then check health every ``health_interval_s``. A crash, a failed start (e.g. a
startup hook that raised) or ``health_failures`` failed checks in a row end the process
and restart it after an exponential backoff (``backoff_base_s`` doubling up to
``backoff_cap_s``; back to the base once an instance stayed ready ``stable_s``). An
instance that dropped a request (``report_failure``) leaves routing at once and is checked
then: restarted if its process died or its health fails, back in routing otherwise.
``stop`` sends SIGTERM to every instance (in-flight requests get uvicorn's graceful
shutdown; sandboxed, to what runs inside bubblewrap), SIGKILL after ``grace_s``. Each instance's stdout and stderr go to
``<log_dir>/<instance id>.log``; why an instance failed (its health error, else the log's
last lines) is logged with loguru.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import aiohttp
from loguru import logger

from canopy.image_environment import ImageEnvironment
from canopy.paths import canopy_home
from miner.containers import ContainerImages
from miner.environments import EnvironmentCache
from miner.instance_state import Instance, InstanceSpec, State, client_session
from miner.launch import Launcher
from miner.processes import ChildProcess, backoff_delay, bindable, exit_text, signal_group
from miner.sandboxing import pip_build_sandbox
from node.sandbox import bwrap_path

__all__ = ["HEALTH_PATH", "ChildProcess", "Instance", "InstanceManager", "InstanceSpec", "State", "backoff_delay"]

HEALTH_PATH = "/_canopy/health"


class InstanceManager:
    """Runs, supervises and routes to the instances of every hosted chute."""

    def __init__(
        self,
        specs: Sequence[InstanceSpec] = (),
        *,
        port_range: tuple[int, int] = (19000, 19999),
        log_dir: str | os.PathLike[str] | None = None,
        python: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        start_timeout_s: float = 900.0,
        health_interval_s: float = 5.0,
        health_timeout_s: float = 10.0,
        health_failures: int = 3,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 60.0,
        stable_s: float = 60.0,
        grace_s: float = 10.0,
        sandbox: bool = True,
        memory_mb: int = 8192,
        max_pids: int = 512,
        environments: EnvironmentCache | None = None,
        containers: ContainerImages | None = None,
        egress_prohibited: Sequence[str] = (),
    ) -> None:
        if port_range[1] < port_range[0]:
            raise ValueError(f"empty port range {port_range}")
        self.port_range = port_range
        self.log_dir = Path(log_dir) if log_dir else Path(os.environ.get("CANOPY_HOME", ".canopy")).expanduser() / "logs"
        self.python = python or sys.executable
        self.cwd = str(cwd) if cwd else None
        self.start_timeout_s = start_timeout_s
        self.health_interval_s = health_interval_s
        self.health_timeout_s = health_timeout_s
        self.health_failures = health_failures
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.stable_s = stable_s
        self.grace_s = grace_s
        if sandbox:
            bwrap_path()  # SandboxUnavailable names the fix now, not at the first start
        # A tag per manager: several miners on one host must never take each other's
        # instances (same chute, same number) for their own in health checks or logs.
        self._tag = secrets.token_hex(3)
        # Where and how each start runs (miner.launch): with ``sandbox`` in bubblewrap, with
        # ``containers`` a registry chute in its image; an image's pip installs from its cached
        # environment (pip itself sandboxed too); ``egress_prohibited``: this miner's addresses on
        # no interface of the host (its public IP behind a NAT), never reachable by egress chutes.
        self.launcher = Launcher(
            python=self.python, cwd=self.cwd, env=env, sandbox=sandbox, containers=containers,
            environments=environments or EnvironmentCache(canopy_home() / "environments",
                                                          wrap=pip_build_sandbox if sandbox else None),
            memory_mb=memory_mb, max_pids=max_pids, grace_s=grace_s, tag=self._tag,
            egress_prohibited=tuple(egress_prohibited))
        self.instances: list[Instance] = []
        self.by_chute: dict[str, list[Instance]] = {}
        self._counts: dict[str, int] = {}  # instance numbers are never reused (nor their log files)
        for spec in specs:
            self._new_instance(spec)
        self._session: aiohttp.ClientSession | None = None
        self._started = False
        self._stopping = False
        # start at a random place: miners sharing a host and a range rarely race for a port
        self._next_port = port_range[0] + secrets.randbelow(port_range[1] - port_range[0] + 1)

    # --- routing (the request path) --------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        """One keep-alive client for every instance (closed by ``stop``)."""
        if self._session is None or self._session.closed:
            self._session = client_session(aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0, force_close=False))
        return self._session

    def _of(self, chute_id: str, revision: str | None) -> list[Instance]:
        instances = self.by_chute.get(chute_id, [])
        return instances if revision is None else [i for i in instances if i.spec.revision == revision]

    def acquire(self, chute_id: str, revision: str | None = None) -> Instance | None:
        """The ready instance of ``chute_id`` (of ``revision`` when given) with free capacity and
        the fewest requests in flight (its count taken), or None. ``release`` it when the
        request ends."""
        best: Instance | None = None
        for instance in self._of(chute_id, revision):
            if instance.available and (best is None or (instance.in_flight, instance.served) < (best.in_flight, best.served)):
                best = instance
        if best is not None:
            best.in_flight += 1
            best.served += 1
            best.last_used = time.monotonic()
        return best

    def release(self, instance: Instance) -> None:
        instance.in_flight = max(0, instance.in_flight - 1)
        instance.last_used = time.monotonic()

    def report_failure(self, instance: Instance, reason: str) -> None:
        """A request to ``instance`` failed at the connection: take it out of routing and
        have its supervisor check it now (a dead process is restarted, a healthy one returns)."""
        if instance.state is State.READY:
            logger.warning("instance {}: {}; checking it", instance.id, reason)
            instance.state = State.CHECKING
            instance.last_error = reason
            instance._poke.set()

    def load(self, chute_id: str, revision: str | None = None) -> tuple[int, int, int]:
        """(instances, ready instances, requests in flight) of ``chute_id`` (of ``revision`` when
        given); a draining instance counts only its requests in flight."""
        instances = self._of(chute_id, revision)
        return (sum(not i.draining for i in instances), sum(i.ready for i in instances),
                sum(i.in_flight for i in instances))

    # --- dynamic instances (the autoscaler) ------------------------------------------------

    def _new_instance(self, spec: InstanceSpec) -> Instance:
        number = self._counts[spec.chute_id] = self._counts.get(spec.chute_id, 0) + 1
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in spec.name)
        name = f"{safe}-{spec.chute_id[:8]}-{number}-{self._tag}"
        instance = Instance(spec, name, self.log_dir / f"{name}.log")
        self.instances.append(instance)
        self.by_chute.setdefault(spec.chute_id, []).append(instance)
        return instance

    def add(self, spec: InstanceSpec) -> Instance:
        """A new instance of ``spec``; on a started manager its supervisor starts now."""
        if self._stopping:
            raise RuntimeError("the instance manager is stopping: no new instances")
        instance = self._new_instance(spec)
        if self._started:
            self._supervise_task(instance)
        return instance

    async def drain(self, instance: Instance, timeout_s: float) -> None:
        """Take ``instance`` out of routing now, let its requests in flight finish (at most
        ``timeout_s``), then stop its process and forget it."""
        if instance not in self.instances:
            return
        instance.draining = True
        deadline = time.monotonic() + timeout_s
        while instance.in_flight and time.monotonic() < deadline and not self._stopping:
            await asyncio.sleep(0.05)
        if instance.in_flight:
            logger.warning("instance {}: {} request(s) still in flight after {:g}s of draining; stopping it",
                           instance.id, instance.in_flight, timeout_s)
        instance._halt = True
        instance._poke.set()
        if instance._task is not None:
            await asyncio.gather(instance._task, return_exceptions=True)
        else:
            await self._terminate(instance)
            instance.state = State.STOPPED
        self._forget(instance)
        logger.info("instance {} ({}) drained and stopped", instance.id, instance.spec.ref)

    def _forget(self, instance: Instance) -> None:
        if instance in self.instances:
            self.instances.remove(instance)
        siblings = self.by_chute.get(instance.spec.chute_id, [])
        if instance in siblings:
            siblings.remove(instance)
        if not siblings:
            self.by_chute.pop(instance.spec.chute_id, None)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, *, wait: bool = True) -> None:
        """Start every instance's supervisor; with ``wait``, return once each instance is
        ready or its first start failed (a failed one keeps retrying in the background)."""
        if self._started:
            raise RuntimeError("the instance manager is already started")
        self._started = True
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for instance in self.instances:
            self._supervise_task(instance)
        if wait:
            await self.wait_started()

    def _supervise_task(self, instance: Instance) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        instance._task = asyncio.create_task(self._supervise(instance), name=f"instance:{instance.id}")

    async def wait_started(self) -> None:
        await asyncio.gather(*(instance._first_outcome.wait() for instance in self.instances))

    async def wait_ready(self, instance: Instance, timeout_s: float) -> bool:
        """Wait until ``instance`` is ready (again); False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while instance.state is not State.READY:
            if time.monotonic() > deadline or self._stopping or instance.draining:
                return False
            await asyncio.sleep(0.02)
        return True

    async def stop(self) -> None:
        """SIGTERM every instance, SIGKILL after ``grace_s``; safe to call twice."""
        self._stopping = True
        for instance in self.instances:
            instance._poke.set()
        tasks = [instance._task for instance in self.instances if instance._task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> "InstanceManager":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- supervision -----------------------------------------------------------------------

    async def _supervise(self, instance: Instance) -> None:
        failures = 0
        try:
            while not self._halted(instance):
                ready = await self._launch(instance)
                instance._first_outcome.set()
                if ready:
                    await self._watch(instance)
                was_ready_for = time.monotonic() - instance.ready_since if instance.ready_since else 0.0
                instance.ready_since = None
                instance.state = State.BACKOFF  # out of routing while it goes down
                await self._terminate(instance)
                if self._halted(instance) or instance.draining:  # a draining instance is not restarted
                    break
                if was_ready_for >= self.stable_s:
                    failures = 0
                delay = backoff_delay(failures, self.backoff_base_s, self.backoff_cap_s)
                failures += 1
                instance.restarts += 1
                instance.failures.append(instance.last_error)
                logger.warning("instance {} ({}) restarts in {:.1f}s (restart #{})", instance.id, instance.spec.ref, delay,
                               instance.restarts)
                instance._poke.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(instance._poke.wait(), delay)  # stop() pokes
        except Exception:
            logger.exception("instance {}: supervisor failed", instance.id)
        finally:
            await self._terminate(instance)
            instance.state = State.STOPPED
            instance._first_outcome.set()

    def _halted(self, instance: Instance) -> bool:
        return self._stopping or instance._halt

    def _allocate_port(self) -> int:
        low, high = self.port_range
        used = {i.port for i in self.instances if i.alive}
        for offset in range(high - low + 1):
            port = low + (self._next_port - low + offset) % (high - low + 1)
            if port in used or not bindable(port):
                continue
            self._next_port = port + 1 if port < high else low
            return port
        raise RuntimeError(f"no free port in {low}..{high} for a chute instance (widen --chutes.port_min/port_max)")

    async def _launch(self, instance: Instance) -> bool:
        """Spawn the process and wait for its readiness; False (with ``last_error``) if it fails."""
        instance.state = State.STARTING
        instance.last_error = ""
        instance._poke.clear()
        try:
            python, sandbox = await self.launcher.confine(instance)
            if sandbox is not None:
                instance.sandbox = sandbox
                instance.port, instance.url = None, "http://chute"
                instance.session = client_session(aiohttp.UnixConnector(path=str(sandbox.socket), limit=0))
            else:
                instance.port = self._allocate_port()
                instance.url = f"http://127.0.0.1:{instance.port}"
        except (RuntimeError, OSError) as error:  # a failed build, no free port, no egress tools
            instance.last_error = str(error)
            logger.error("instance {}: {}", instance.id, error)
            return False
        instance.starts += 1
        started = time.monotonic()
        with open(instance.log_path, "ab") as log:
            log.write(f"\n=== canopy miner: start #{instance.starts} of {instance.spec.ref} on port {instance.port} "
                      f"at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
            log.flush()
            try:
                instance.process = ChildProcess(subprocess.Popen(
                    self.launcher.command(instance, python, sandbox), cwd=instance.spec.cwd or self.cwd,
                    env=self.launcher.environment(instance), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, pass_fds=sandbox.pass_fds if sandbox else ()))
            except (OSError, RuntimeError, ValueError) as error:  # RuntimeError: SandboxUnavailable
                instance.last_error = f"cannot start {python}: {error}"
                logger.error("instance {}: {}", instance.id, instance.last_error)
                return False
        if sandbox is not None:
            try:
                await sandbox.started(instance.process.pid)
            except (RuntimeError, OSError, TimeoutError) as error:
                instance.last_error = f"its network could not be set up: {error}"
                logger.error("instance {}: {}", instance.id, instance.last_error)
                return False
        logger.info("instance {} ({}) starting {} (pid {}, devices [{}])", instance.id, instance.spec.ref,
                    f"sandboxed on {sandbox.socket}" if sandbox else f"on port {instance.port}", instance.process.pid,
                    ", ".join(str(d.index) for d in instance.spec.devices))
        deadline = started + self.start_timeout_s
        pause = 0.02
        while not self._halted(instance):
            if not instance.alive:
                instance.last_error = (f"exited ({exit_text(instance.process.returncode)}) before it was ready: "
                                       f"{instance.last_error or self._log_tail(instance)} (log: {instance.log_path})")
                logger.error("instance {} ({}) failed to start: {}", instance.id, instance.spec.ref, instance.last_error)
                return False
            status, body = await self._health(instance)
            if status == 200:
                instance.cold_start_s = time.monotonic() - started
                instance.ready_since = instance.last_used = time.monotonic()
                instance.last_error = ""
                instance.state = State.READY
                logger.info("instance {} ({}) ready on port {} after {:.2f}s", instance.id, instance.spec.ref,
                            instance.port, instance.cold_start_s)
                return True
            if isinstance(body, dict) and body.get("status") == "failed":
                instance.last_error = f"startup failed: {body.get('error') or 'no reason given'}"
            if time.monotonic() > deadline:
                instance.last_error = f"not ready within {self.start_timeout_s:g}s"
                logger.error("instance {} ({}): {}", instance.id, instance.spec.ref, instance.last_error)
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(instance.process.wait(), pause)
            pause = min(0.25, pause * 1.5)
        return False

    async def _watch(self, instance: Instance) -> None:
        """Return when the ready ``instance`` died, failed its health checks, or we stop."""
        assert instance.process is not None
        exited = asyncio.ensure_future(instance.process.wait())
        failed_checks = 0
        try:
            while not self._halted(instance):
                poked = asyncio.ensure_future(instance._poke.wait())
                await asyncio.wait({exited, poked}, timeout=self.health_interval_s, return_when=asyncio.FIRST_COMPLETED)
                poked.cancel()
                instance._poke.clear()
                if self._halted(instance):
                    return
                checking = instance.state is State.CHECKING
                if checking and not exited.done():  # a dropped connection: is the process going down?
                    await asyncio.wait({exited}, timeout=1.0)
                if exited.done():
                    memory = (f"; past its {self.launcher.memory_cap_mb(instance.spec)} MiB memory cap"
                              if instance.sandbox is not None and instance.sandbox.oom_killed() else "")
                    instance.last_error = (f"crashed ({exit_text(instance.process.returncode)}{memory}; "
                                           f"log: {instance.log_path})")
                    logger.error("instance {} ({}) {}", instance.id, instance.spec.ref, instance.last_error)
                    return
                status, body = await self._health(instance)
                if status == 200:
                    failed_checks = 0
                    if checking:
                        instance.state = State.READY
                        logger.info("instance {} is healthy again", instance.id)
                    continue
                if checking:
                    instance.last_error += f"; then health check failed ({status or 'no answer'})"
                    return
                failed_checks += 1
                why = body.get("error") if isinstance(body, dict) else None
                instance.last_error = f"health check failed ({status or 'no answer'}{': ' + str(why) if why else ''})"
                logger.warning("instance {}: {} [{} of {}]", instance.id, instance.last_error, failed_checks,
                               self.health_failures)
                if failed_checks >= self.health_failures or (isinstance(body, dict) and body.get("status") == "failed"):
                    return
        finally:
            exited.cancel()

    def refusal(self, environment: ImageEnvironment, egress: bool = False, *, pinned: bool = False) -> str | None:
        """Why this miner's runtime cannot run a chute (``miner.launch.Launcher.refusal``); None when it can."""
        return self.launcher.refusal(environment, egress, pinned=pinned)

    def session_for(self, instance: Instance) -> aiohttp.ClientSession:
        """The client that reaches ``instance``: its Unix socket's (sandboxed), else the shared one."""
        return instance.session if instance.session is not None else self.session

    async def _health(self, instance: Instance) -> tuple[int, object]:
        """(status, JSON body) of the instance's health route; (0, None) when it does not answer."""
        try:
            async with self.session_for(instance).get(instance.url + HEALTH_PATH,
                                        timeout=aiohttp.ClientTimeout(total=self.health_timeout_s)) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
                if isinstance(body, dict) and body.get("instance_id") not in (None, instance.id):
                    return 0, None  # another process holds our port: not our instance
                return response.status, body
        except (aiohttp.ClientError, OSError, TimeoutError):
            return 0, None

    async def _terminate(self, instance: Instance) -> None:
        """SIGTERM the process (its group), SIGKILL after ``grace_s``; wait for it; then undo its sandbox."""
        process = instance.process
        if process is not None and process.returncode is None:
            if instance.sandbox is not None:
                instance.sandbox.terminate(process.pid)
            else:
                signal_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self.grace_s)
            except TimeoutError:
                logger.warning("instance {} ignored SIGTERM for {:g}s: SIGKILL", instance.id, self.grace_s)
                signal_group(process.pid, signal.SIGKILL)
                await process.wait()
        elif process is not None:
            signal_group(process.pid, signal.SIGKILL)  # whatever the instance left behind in its group
        instance.process = None
        if instance.session is not None:
            await instance.session.close()
            instance.session = None
        if instance.sandbox is not None:
            await instance.sandbox.close()
            instance.sandbox = None

    @staticmethod
    def _log_tail(instance: Instance, lines: int = 3, limit: int = 8192) -> str:
        try:
            with open(instance.log_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - limit))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        tail = [line.strip() for line in text.split("=== canopy miner:")[-1].splitlines()[1:] if line.strip()]
        return " | ".join(tail[-lines:]) or "(nothing logged)"
