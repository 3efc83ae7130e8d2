"""miner.instances: real instance processes: readiness, pinning, restarts, health, shutdown.

Every test that starts instances runs on both runtimes: ``sandbox`` (bubblewrap, reached over
a Unix socket: the default) and ``process`` (a plain child on a port of the range)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import time

import pytest

from miner.instances import Instance, InstanceManager, InstanceSpec, State, backoff_delay
from tests.support import ROOT, free_port
from tests.support.chutes import BAD_HOOK, ECHO, STUBBORN, cpu_devices, fake_h100s

ECHO_ID, BAD_ID, STUBBORN_ID = "5d52d889-b3e4-59ed-b622-940c25cbe07a", "bad-hook-id", "stubborn-id"


def port_range(size: int = 40) -> tuple[int, int]:
    low = free_port()
    low = min(low, 65535 - size)
    return low, low + size - 1


RUNTIMES = ["sandbox", "process"] if shutil.which("bwrap") or os.environ.get("CANOPY_REQUIRE_BWRAP") else ["process"]


@pytest.fixture(params=RUNTIMES)
def runtime(request) -> str:
    """Each test that starts instances runs on each runtime (it passes it to ``manager``)."""
    return request.param


def manager(specs, tmp_path, runtime: str = "process", **options) -> InstanceManager:
    settings = dict(port_range=port_range(), log_dir=tmp_path / "logs", cwd=ROOT, backoff_base_s=0.2,
                    backoff_cap_s=2.0, grace_s=3.0, start_timeout_s=30.0, sandbox=runtime == "sandbox")
    settings.update(options)
    return InstanceManager(specs, **settings)


def address(instance: Instance) -> object:
    """Where the instance listens: its Unix socket (sandboxed) or its port."""
    return instance.sandbox.socket if instance.sandbox is not None else instance.port


async def get(manager: InstanceManager, instance: Instance, path: str) -> dict:
    async with manager.session_for(instance).post(instance.url + path) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def test_backoff_doubles_up_to_the_cap():
    assert [backoff_delay(n, 0.5, 5.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff_delay(10_000, 1.0, 60.0) == 60.0


async def test_instances_start_pinned_to_their_gpus_and_stop_gracefully(tmp_path, runtime):
    gpus = fake_h100s(2)
    specs = [InstanceSpec(ECHO_ID, "echo", ECHO, (gpu,), concurrency=2) for gpu in gpus]
    instances = manager(specs, tmp_path, runtime)
    await instances.start()
    try:
        first, second = instances.instances
        assert first.state is State.READY and second.state is State.READY
        assert 0 < first.cold_start_s < 30 and address(first) != address(second)
        if runtime == "process":
            assert all(instances.port_range[0] <= i.port <= instances.port_range[1] for i in instances.instances)
        else:
            assert first.port is None and first.sandbox.socket.is_socket(), "no port: its Unix socket only"
        seen = [await get(instances, i, "/whoami") for i in (first, second)]
        assert [s["cuda_visible_devices"] for s in seen] == [gpu.uuid for gpu in gpus]
        assert [s["instance"] for s in seen] == [first.id, second.id]
        assert instances.load(ECHO_ID) == (2, 2, 0)
        pids = [i.process.pid for i in (first, second)]  # the host's pids (inside a sandbox it has its own)
    finally:
        started = time.monotonic()
        await instances.stop()
    assert time.monotonic() - started < 3.0, "SIGTERM is enough for a well-behaved instance"
    assert all(i.state is State.STOPPED and i.process is None for i in instances.instances)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    log = first.log_path.read_text()
    assert "serving chute tests/echo" in log and "shutdown hooks" in log, "stdout/stderr go to the instance's log file"


async def test_a_cpu_pseudo_device_is_shared_and_hides_the_gpus(tmp_path, runtime):
    [cpu] = cpu_devices(1)
    instances = manager([InstanceSpec(ECHO_ID, "echo", ECHO, (cpu,), concurrency=3, concurrency_override=True)], tmp_path, runtime)
    async with instances:
        [instance] = instances.instances
        assert (await get(instances, instance, "/whoami"))["cuda_visible_devices"] == ""
        async with instances.session_for(instance).get(instance.url + "/_canopy/health") as response:
            assert (await response.json())["concurrency"] == 3, "the hosting config's concurrency reaches the instance"


async def test_a_crash_restarts_the_instance_with_backoff_and_the_other_keeps_serving(tmp_path, runtime):
    [cpu] = cpu_devices(1)
    specs = [InstanceSpec(ECHO_ID, "echo", ECHO, (cpu,), concurrency=2) for _ in range(2)]
    instances = manager(specs, tmp_path, runtime)
    async with instances:
        victim, other = instances.instances
        old_address = address(victim)
        pid = (await get(instances, victim, "/whoami"))["pid"]
        os.killpg(victim.process.pid, signal.SIGKILL)  # the instance and, sandboxed, its bubblewrap
        for _ in range(200):
            if victim.state is not State.READY:
                break
            await asyncio.sleep(0.01)
        assert victim.state in (State.BACKOFF, State.STARTING)
        assert instances.acquire(ECHO_ID) is other, "only the live instance takes requests meanwhile"
        instances.release(other)
        assert (await get(instances, other, "/whoami"))["instance"] == other.id
        assert await instances.wait_ready(victim, 20), victim.last_error
        assert victim.restarts == 1 and victim.starts == 2 and address(victim) != old_address
        assert victim.failures[0].startswith("crashed (killed by SIGKILL")
        assert runtime == "sandbox" or (await get(instances, victim, "/whoami"))["pid"] != pid


async def test_a_startup_hook_that_raises_is_logged_and_retried_while_others_serve(tmp_path, runtime):
    [cpu] = cpu_devices(1)
    specs = [InstanceSpec(BAD_ID, "bad-hook", BAD_HOOK, (cpu,)), InstanceSpec(ECHO_ID, "echo", ECHO, (cpu,))]
    instances = manager(specs, tmp_path, runtime, backoff_base_s=0.5)
    async with instances:
        bad, echo = instances.instances
        assert echo.state is State.READY
        assert bad.state in (State.BACKOFF, State.STARTING)
        assert "startup failed: RuntimeError: the model file is missing" in bad.last_error
        assert instances.acquire(BAD_ID) is None and instances.load(BAD_ID) == (1, 0, 0)
        for _ in range(300):
            if bad.starts >= 2:
                break
            await asyncio.sleep(0.02)
        assert bad.starts >= 2, "a failed start is retried after the backoff"
        assert "the model file is missing" in bad.log_path.read_text()
        assert (await get(instances, echo, "/whoami"))["instance"] == echo.id


async def test_an_instance_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path, runtime):
    [cpu] = cpu_devices(1)
    instances = manager([InstanceSpec(STUBBORN_ID, "stubborn", STUBBORN, (cpu,))], tmp_path, runtime, grace_s=0.5)
    await instances.start()
    [instance] = instances.instances
    assert instance.state is State.READY
    process = instance.process
    started = time.monotonic()
    await instances.stop()
    assert 0.5 <= time.monotonic() - started < 5
    assert process.returncode == -signal.SIGKILL


async def test_an_unresponsive_instance_fails_its_health_checks_and_is_replaced(tmp_path, runtime):
    [cpu] = cpu_devices(1)
    instances = manager([InstanceSpec(ECHO_ID, "echo", ECHO, (cpu,))], tmp_path, runtime, health_interval_s=0.1,
                        health_timeout_s=0.2, health_failures=2, grace_s=0.3)
    async with instances:
        [instance] = instances.instances
        frozen = instance.process
        os.killpg(frozen.pid, signal.SIGSTOP)  # alive, but answers nothing
        for _ in range(300):
            if instance.starts >= 2:
                break
            await asyncio.sleep(0.02)
        assert instance.starts >= 2 and "health check failed (no answer)" in instance.failures[0]
        assert frozen.returncode is not None, "the frozen process was killed"
        assert await instances.wait_ready(instance, 20)


def test_ports_come_from_the_range_and_skip_busy_ones(tmp_path):
    low, high = port_range(3)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", low))
        busy.listen()
        instances = InstanceManager([], port_range=(low, high), log_dir=tmp_path)
        # the scan starts at a random place (miners sharing a host rarely collide) and wraps
        first, second = instances._allocate_port(), instances._allocate_port()
        assert first != second and {first, second} <= {low + 1, low + 2}
        with pytest.raises(ValueError, match="empty port range"):
            InstanceManager([], port_range=(high, low))
        full = InstanceManager([], port_range=(low, low), log_dir=tmp_path)
        with pytest.raises(RuntimeError, match=r"no free port in .* \(widen --chutes.port_min/port_max\)"):
            full._allocate_port()


def test_acquire_picks_the_least_loaded_ready_instance_with_room(tmp_path):
    [cpu] = cpu_devices(1)
    instances = InstanceManager([InstanceSpec("c", "c", "x:chute", (cpu,), concurrency=2) for _ in range(3)], log_dir=tmp_path)
    a, b, c = instances.instances
    a.state = b.state = State.READY  # c is still starting
    picked = [instances.acquire("c") for _ in range(4)]
    assert sorted(i.id for i in picked) == sorted([a.id, a.id, b.id, b.id])
    assert instances.acquire("c") is None and instances.load("c") == (3, 2, 4)
    instances.release(b)
    assert instances.acquire("c") is b
    assert instances.acquire("unknown") is None


async def test_added_instances_start_at_once_and_a_drain_lets_the_call_in_flight_finish(tmp_path, runtime):
    [cpu] = cpu_devices(1)
    old, new = "a" * 64, "b" * 64
    instances = manager([], tmp_path, runtime)
    await instances.start()
    try:
        first = instances.add(InstanceSpec(ECHO_ID, "echo", ECHO, (cpu,), concurrency=2, revision=old))
        second = instances.add(InstanceSpec(ECHO_ID, "echo", ECHO, (cpu,), concurrency=2, revision=new))
        assert await instances.wait_ready(first, 30), first.last_error
        assert await instances.wait_ready(second, 30), second.last_error
        assert instances.load(ECHO_ID) == (2, 2, 0) and instances.load(ECHO_ID, old) == (1, 1, 0)
        assert instances.acquire(ECHO_ID, "c" * 64) is None, "no instance of that revision"
        idle_before = first.last_used
        assert instances.acquire(ECHO_ID, old) is first and first.idle_s() == 0.0 and first.last_used >= idle_before
        instances.release(first)
        pid = first.process.pid

        async def slow_call() -> tuple[int, dict]:  # as the chutes service calls: the count held meanwhile
            taken = instances.acquire(ECHO_ID, old)
            assert taken is first
            try:
                async with instances.session_for(first).post(first.url + "/sleep", json={"seconds": 2.0}) as response:
                    return response.status, await response.json()
            finally:
                instances.release(taken)

        call = asyncio.create_task(slow_call())
        await asyncio.sleep(0.3)
        draining = asyncio.create_task(instances.drain(first, timeout_s=20))
        await asyncio.sleep(0.1)
        assert instances.acquire(ECHO_ID, old) is None, "out of routing at once"
        assert instances.load(ECHO_ID, old) == (0, 0, 1) and not draining.done()
        status, body = await call
        assert status == 200 and body["slept"] == 2.0, "the call in flight finished"
        await asyncio.wait_for(draining, 10)
        assert first.state is State.STOPPED and first not in instances.instances
        assert instances.by_chute[ECHO_ID] == [second] and second.state is State.READY
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert (await get(instances, second, "/whoami"))["instance"] == second.id, "the other revision serves on"
        assert second.id != first.id and first.log_path != second.log_path
    finally:
        await instances.stop()


async def test_a_drain_stops_the_instance_after_its_timeout_and_never_restarts_it(tmp_path, runtime):
    [cpu] = cpu_devices(1)
    instances = manager([], tmp_path, runtime, grace_s=0.5)
    await instances.start()
    try:
        instance = instances.add(InstanceSpec(ECHO_ID, "echo", ECHO, (cpu,), concurrency=2))
        assert await instances.wait_ready(instance, 30), instance.last_error
        instances.acquire(ECHO_ID)  # a request that never ends
        started = time.monotonic()
        await instances.drain(instance, timeout_s=0.3)
        assert 0.3 <= time.monotonic() - started < 5
        assert instance.state is State.STOPPED and instance.starts == 1 and instances.instances == []
        assert ECHO_ID not in instances.by_chute
        with pytest.raises(RuntimeError, match="stopping"):
            await instances.stop()
            instances.add(InstanceSpec(ECHO_ID, "echo", ECHO, (cpu,)))
    finally:
        await instances.stop()


async def test_a_chain_runs_its_dependency_in_the_same_instance(tmp_path, runtime):
    """A chute that calls another (``canopy.depends``) with no URL for it: the dependency runs
    inside the same instance (``canopy.chains_local``), sandboxed like it."""
    [cpu] = cpu_devices(1)
    instances = manager([InstanceSpec("pipeline-id", "pipeline", "tests.canopy.chutes.pipeline:chute", (cpu,))], tmp_path,
                        runtime)
    async with instances:
        [instance] = instances.instances
        assert instance.ready, instance.last_error
        async with instances.session_for(instance).post(instance.url + "/run", json={"text": "ok"}) as response:
            assert response.status == 200, await response.text()
            assert await response.json() == {"result": "OK!", "letters": ["O", "K"]}
