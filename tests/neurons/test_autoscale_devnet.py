"""The autoscaler on the devnet: a miner with one device hosts the chute its callers want.

One miner process with one CPU pseudo-device that holds one instance at a time
(``--chutes.cpu_device_slots 1``) that runs them in its bubblewrap sandbox
(``--chutes.runtime sandbox``), the validator and API processes, two chutes the test
writes and deploys with the real CLI: ``idle`` (deployed first, so its deploy-time warmup
gets it the device) and ``busy``, then called in a loop. The miner ends up hosting
``busy`` and not ``idle`` (preempted: worth far less), with each decision's reason in its log
and in its Prometheus ``/metrics``; once the calls stop, ``busy`` is stopped after its
``shutdown_after_seconds`` and not before, and not started again.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from canopy.chute import chute_id
from tests.support import free_port
from tests.support.subnet import DeployNet

CHUTE = '''
from pydantic import BaseModel
from canopy import Chute, NodeSelector

chute = Chute(username="alice", name=NAME, node_selector=NodeSelector(gpu_count=1, min_vram_gb_per_gpu=0), concurrency=4)


class Words(BaseModel):
    text: str


@chute.cord(public_api_path="/say")
async def say(self, args: Words) -> dict:
    return {"said": args.text, "by": NAME}
'''
IDLE_AFTER_S = 12


async def hosted(net: DeployNet) -> set[str]:
    """The chute ids the miner's instances are ready for."""
    return {chute.chute_id for chute in (await net.inventories("solo"))["solo"] if chute.ready_instances}


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_one_device_ends_up_hosting_the_busy_chute_and_stops_it_when_idle(tmp_path):
    metrics_port = free_port()
    net = DeployNet(tmp_path, miners={"solo": 1}, miner_flags={"solo": ["--chutes.cpu_device_slots", "1",
                                                                       "--chutes.metrics_port", str(metrics_port),
                                                                       "--chutes.runtime", "sandbox"]},
                    api_flags=["--api.cold_start_wait_s", "60"])
    refs = {}
    for name in ("idle", "busy"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.py").write_text(f"NAME = {name!r}\n" + CHUTE)
        refs[name] = f"{tmp_path / name / name}.py:chute"
    ids = {name: chute_id("alice", name) for name in refs}
    try:
        await net.start()
        alice = await net.key("alice", owner="alice")
        assert net.cli("deploy", refs["idle"], "--wait", "--wait-timeout", "90", key=alice).returncode == 0
        assert await hosted(net) == {ids["idle"]}
        deployed = net.cli("deploy", refs["busy"], "--shutdown-after", str(IDLE_AFTER_S), key=alice)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr

        answers: list[int] = []
        stop = asyncio.Event()
        async with aiohttp.ClientSession() as http:
            async def caller() -> None:
                while not stop.is_set():
                    status, _, _ = await net.call(http, "/chutes/alice/busy/say", {"text": "hi"}, key=alice)
                    answers.append(status)
                    await asyncio.sleep(0.1)

            callers = [asyncio.create_task(caller()) for _ in range(3)]

            async def busy_only() -> bool:
                return await hosted(net) == {ids["busy"]} and answers[-3:] == [200, 200, 200]

            await net.until("the miner hosting busy instead of idle", busy_only, 120)
            stop.set()
            await asyncio.gather(*callers)
            async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                exposition = await response.text()
        assert 'canopy_miner_autoscaler_decisions_total{action="drain",reason="preempted"} 1.0' in exposition, exposition
        assert f'canopy_miner_instances{{chute="{ids["busy"]}"' in exposition
        last_call = time.monotonic()
        assert answers.count(200) >= 3

        async def nothing_hosted() -> bool:
            return not await hosted(net)

        await net.until("busy stopped once idle", nothing_hosted, IDLE_AFTER_S + 60, pause=0.5)
        idle_for = time.monotonic() - last_call
        assert idle_for >= IDLE_AFTER_S - 1, f"busy was stopped {idle_for:.1f}s after its last call"
        await asyncio.sleep(6)
        assert not await hosted(net), "a chute stopped for idleness is not started again without new demand"
    finally:
        outputs = net.stop()
        for name, (code, output) in outputs.items():
            print(f"===== {name} (exit {code})\n{output[-6000:]}")
    assert "busy:chute) starting sandboxed on" in outputs["solo"][1], "the registry chutes ran in the sandbox"
    decisions = [line for line in outputs["solo"][1].splitlines() if "autoscaler:" in line]
    assert any("drain" in line and "(preempted)" in line and "alice/busy" in line for line in decisions), decisions
    assert any("drain" in line and "(idle)" in line and "no user demand" in line for line in decisions), decisions
    assert all(code == 0 for code, _ in outputs.values()), {name: code for name, (code, _) in outputs.items()}
