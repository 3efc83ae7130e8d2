"""Announce and DeliverBundle over the wire: a validator's dendrite -> a real axon -> the autoscaler -> a real instance.

The chute is a file the test writes (importing a helper module beside it), bundled as
``canopy deploy`` would; the miner holds no copy of it until a validator delivers one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from canopy.bundle import build_bundle
from canopy.chute import chute_id
from canopy.inspect import inspect_bundle
from chain.base import Metagraph
from miner.announcements import Announcements
from miner.autoscaler import Autoscaler, running_revisions
from miner.bundles import BundleStore
from miner.chutes_service import ChutesService
from miner.instances import InstanceManager
from miner.registry_service import RegistryService
from node.wallets import create_devnet_wallet
from protocol import errors
from protocol.axon import Axon
from protocol.chutes import HostedCord, Invoke
from protocol.dendrite import Dendrite
from protocol.graval.synapses import Inventory
from protocol.options import AxonSettings
from protocol.registry import Announce, AnnouncedChute, AnnounceResponse, BundleReceipt, ChuteDemand, DeliverBundle
from tests.support import free_port
from tests.support.chutes import cpu_devices
from tests.support.network import NETUID, StaticChain, neuron

CHUTE = '''
from canopy.chute import Chute
from greeting import GREETING

chute = Chute(username="alice", name="hello", node_selector={"gpu_count": 1, "min_vram_gb_per_gpu": 0})


@chute.cord(public_api_path="/v1/hello")
async def hello(self) -> dict:
    return {"greeting": GREETING}


@chute.cord()
async def slow(self) -> dict:
    import asyncio
    await asyncio.sleep(6.0)
    return {"greeting": GREETING}
'''


def write_chute(folder, greeting: str):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hello.py").write_text(CHUTE)
    (folder / "greeting.py").write_text(f"GREETING = {greeting!r}\n")
    return build_bundle(f"{folder}/hello.py:chute")


async def announced(bundle, *, shutdown_after_seconds: int = 300, **demand) -> AnnouncedChute:
    info = await asyncio.to_thread(inspect_bundle, bundle.data, revision=bundle.revision)
    return AnnouncedChute(chute_id=chute_id("alice", "hello"), owner="alice", name="hello", revision=bundle.revision,
                          node_selector=info.node_selector.model_dump(), concurrency=info.concurrency,
                          cords=[HostedCord.model_validate(cord.model_dump()) for cord in info.cords],
                          max_instances=1, shutdown_after_seconds=shutdown_after_seconds, demand=ChuteDemand(**demand))


async def miner_with(tmp_path, *, autoscale: bool = True, ttl_s: float = 60, rollover_overlap_s: float = 1.0):
    wallets = SimpleNamespace(miner=create_devnet_wallet("rminer", "default", tmp_path / "wallets"),
                              validator=create_devnet_wallet("rvalidator", "default", tmp_path / "wallets"))
    graph = Metagraph(netuid=NETUID, block=10, neurons=(neuron(0, wallets.miner, stake=0.0, permit=False),
                                                       neuron(1, wallets.validator, stake=1000.0, permit=True)))
    devices = cpu_devices(1)
    low = min(free_port(), 65000)
    manager = InstanceManager([], port_range=(low, low + 40), log_dir=tmp_path / "logs", backoff_base_s=0.2,
                              grace_s=2.0, start_timeout_s=30)
    axon = Axon(wallets.miner, StaticChain(graph), NETUID, AxonSettings(ip="127.0.0.1", port=free_port()))
    service = ChutesService(manager, [], devices=devices, invoke_timeout_s=30).attach(axon)
    bundles, announcements, metrics = BundleStore(tmp_path / "bundles"), Announcements(ttl_s=ttl_s), CollectorRegistry()
    autoscaler = Autoscaler(manager, service, announcements, bundles, devices, cpu_slots=2, interval_s=0.2,
                            drain_timeout_s=20, registry=metrics, rollover_overlap_s=rollover_overlap_s) if autoscale else None
    RegistryService(announcements, bundles, autoscaler, running=lambda: running_revisions(manager)).attach(axon)
    await manager.start()
    await axon.start()
    if autoscaler is not None:
        await autoscaler.start()
    return SimpleNamespace(axon=axon, manager=manager, service=service, bundles=bundles, autoscaler=autoscaler,
                           metrics=metrics, dendrite=Dendrite(wallets.validator))


async def shut(miner) -> None:
    await miner.dendrite.close()
    await miner.axon.stop()
    if miner.autoscaler is not None:
        await miner.autoscaler.stop()
    await miner.manager.stop()


async def call(miner, synapse):
    result = await miner.dendrite.call(miner.axon, synapse, timeout=30)
    assert result.ok, result.error
    return result.response


async def until(condition, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def deliver(revision: str, data: bytes) -> DeliverBundle:
    return DeliverBundle(revision=revision, data=base64.b64encode(data).decode())


async def test_an_announced_chute_is_wanted_delivered_started_invoked_and_withdrawn(tmp_path):
    bundle = write_chute(tmp_path / "src", "hello from the bundle")
    chute = await announced(bundle, warmup=True)
    miner = await miner_with(tmp_path)
    try:
        reply = await call(miner, Announce(chutes=[chute], window_s=60))
        assert isinstance(reply, AnnounceResponse)
        assert reply.running == {} and reply.wanted == [bundle.revision]

        tampered = bytearray(bundle.data)
        tampered[-20] ^= 0x01
        receipt = await call(miner, deliver(bundle.revision, bytes(tampered)))
        assert isinstance(receipt, BundleReceipt)
        assert not receipt.stored and "sha256" in receipt.reason
        other = write_chute(tmp_path / "other", "not announced")
        stranger = await call(miner, deliver(other.revision, other.data))
        assert not stranger.stored and "not the current revision" in stranger.reason
        await miner.autoscaler.step()
        assert miner.manager.instances == [] and not miner.bundles.has(bundle.revision), "nothing runs unverified"
        assert (await call(miner, Announce(chutes=[chute]))).wanted == [bundle.revision], "still wanted"

        receipt = await call(miner, deliver(bundle.revision, bundle.data))
        assert receipt.stored and receipt.revision == bundle.revision
        await until(lambda: any(i.ready for i in miner.manager.instances))
        [instance] = miner.manager.instances
        assert instance.spec.revision == bundle.revision and not instance.spec.pinned
        assert instance.spec.cwd == str(miner.bundles.folder(bundle.revision)) and instance.spec.ref == "hello:chute"

        synapse = Invoke(chute_id=chute.chute_id, path="/hello", revision=bundle.revision, payload={})
        [chunk] = [c async for c in miner.dendrite.stream(miner.axon, synapse, timeout=30)]
        assert chunk.status == 200 and json.loads(chunk.data) == {"greeting": "hello from the bundle"}
        [alias] = [c async for c in miner.dendrite.stream(miner.axon, Invoke(chute_id=chute.chute_id,
                                                                             path="/v1/hello", payload={}))]
        assert alias.status == 200, "without a revision: the newest ready one"
        with pytest.raises(errors.NotFound, match=f"is not hosted at revision {other.revision}"):
            [c async for c in miner.dendrite.stream(miner.axon, synapse.model_copy(update={"revision": other.revision}))]

        inventory = (await miner.dendrite.call(miner.axon, Inventory(), timeout=10)).response
        [hosted] = inventory.chutes
        assert (hosted.chute_id, hosted.revision, hosted.username, hosted.ready_instances) == (
            chute.chute_id, bundle.revision, "alice", 1)
        reply = await call(miner, Announce(chutes=[chute]))
        assert reply.running == {chute.chute_id: bundle.revision} and reply.wanted == []
        assert miner.metrics.get_sample_value("canopy_miner_autoscaler_decisions_total",
                                              {"action": "start", "reason": "warmup"}) == 1
        assert miner.metrics.get_sample_value("canopy_miner_instances",
                                              {"chute": chute.chute_id, "revision": bundle.revision}) == 1

        pid = instance.process.pid
        assert (await call(miner, Announce(chutes=[]))).running == {}, "a draining instance is out of routing"
        await until(lambda: not miner.manager.instances, timeout=15)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert miner.service.chutes == {}
        assert miner.metrics.get_sample_value("canopy_miner_autoscaler_decisions_total",
                                              {"action": "drain", "reason": "withdrawn"}) == 1
        assert miner.metrics.get_sample_value("canopy_miner_instances",
                                              {"chute": chute.chute_id, "revision": bundle.revision}) is None
    finally:
        await shut(miner)


async def invoke(miner, chute: AnnouncedChute, path: str, revision: str | None = None) -> dict:
    synapse = Invoke(chute_id=chute.chute_id, path=path, revision=revision, payload={})
    [chunk] = [c async for c in miner.dendrite.stream(miner.axon, synapse, timeout=30)]
    return json.loads(chunk.data)


async def test_a_new_revision_rolls_over_without_dropping_the_call_in_flight(tmp_path):
    first = write_chute(tmp_path / "v1", "one")
    second = write_chute(tmp_path / "v2", "two")
    v1, v2 = await announced(first, warmup=True), await announced(second)
    miner = await miner_with(tmp_path)
    try:
        assert (await call(miner, Announce(chutes=[v1]))).wanted == [first.revision]
        assert (await call(miner, deliver(first.revision, first.data))).stored
        await until(lambda: any(i.ready for i in miner.manager.instances))
        [old] = miner.manager.instances
        slow = asyncio.create_task(invoke(miner, v1, "/slow"))
        await until(lambda: old.in_flight == 1)

        assert (await call(miner, Announce(chutes=[v2]))).wanted == [second.revision], "a rollover start, no demand"
        assert (await call(miner, deliver(second.revision, second.data))).stored
        await until(lambda: old.draining, timeout=20)  # once the new revision's instance is ready
        assert not slow.done(), "the old revision drains with the call still in flight"
        [new] = [i for i in miner.manager.instances if i is not old]
        assert new.spec.revision == second.revision and new.ready
        assert await invoke(miner, v2, "/hello") == {"greeting": "two"}, "no revision: the newest ready one"
        assert await slow == {"greeting": "one"}, "the old revision finished its call"
        await until(lambda: old not in miner.manager.instances, timeout=15)
        assert [(c.chute_id, c.revision) for c in miner.service.hosted()] == [(v2.chute_id, second.revision)]
        with pytest.raises(errors.NotFound, match="not hosted at revision"):
            await invoke(miner, v1, "/hello", revision=first.revision)
        assert miner.metrics.get_sample_value("canopy_miner_autoscaler_decisions_total",
                                              {"action": "start", "reason": "rollover"}) == 1
        assert miner.metrics.get_sample_value("canopy_miner_autoscaler_decisions_total",
                                              {"action": "drain", "reason": "rollover"}) == 1
    finally:
        await shut(miner)


async def test_an_idle_instance_stops_and_starts_again_only_on_newer_demand(tmp_path):
    bundle = write_chute(tmp_path / "src", "hi")
    chute = await announced(bundle, shutdown_after_seconds=1, warmup=True, idle_s=0.0)
    miner = await miner_with(tmp_path)
    try:
        await call(miner, Announce(chutes=[chute]))
        assert (await call(miner, deliver(bundle.revision, bundle.data))).stored
        await until(lambda: any(i.ready for i in miner.manager.instances))
        [first] = miner.manager.instances
        await until(lambda: first not in miner.manager.instances, timeout=15)
        assert first.last_error == "" and first.restarts == 0
        assert miner.metrics.get_sample_value("canopy_miner_autoscaler_decisions_total",
                                              {"action": "drain", "reason": "idle"}) == 1
        await asyncio.sleep(1.0)  # several decisions: the warm-up it was started for is older than the stop
        assert miner.manager.instances == []
        await call(miner, Announce(chutes=[chute]))  # idle_s 0: demand newer than the stop
        await until(lambda: any(i.ready for i in miner.manager.instances))
        assert miner.metrics.get_sample_value("canopy_miner_autoscaler_decisions_total",
                                              {"action": "start", "reason": "warmup"}) == 2
    finally:
        await shut(miner)


async def test_without_the_autoscaler_announcements_are_answered_and_bundles_refused(tmp_path):
    bundle = write_chute(tmp_path / "src", "hi")
    chute = await announced(bundle, refused=3)
    miner = await miner_with(tmp_path, autoscale=False)
    try:
        reply = await call(miner, Announce(chutes=[chute]))
        assert reply.running == {} and reply.wanted == []
        receipt = await call(miner, deliver(bundle.revision, bundle.data))
        assert not receipt.stored and "--chutes.autoscale false" in receipt.reason
        assert not miner.bundles.has(bundle.revision) and miner.manager.instances == []
    finally:
        await shut(miner)


async def test_silent_validators_leave_the_running_instances_as_they_are(tmp_path):
    """Every announcement expired (validators restarting, or the miner cut off): nothing is
    drained as withdrawn; the next announcement that leaves the chute out drains it."""
    bundle = write_chute(tmp_path / "src", "still here")
    chute = await announced(bundle, warmup=True)
    miner = await miner_with(tmp_path, ttl_s=1.0)
    try:
        assert (await call(miner, Announce(chutes=[chute]))).wanted == [bundle.revision]
        assert (await call(miner, deliver(bundle.revision, bundle.data))).stored
        await until(lambda: any(i.ready for i in miner.manager.instances))
        await asyncio.sleep(1.5)  # the announcement expires
        assert await miner.autoscaler.step() == []
        assert [i.ready for i in miner.manager.instances] == [True]
        assert (await invoke(miner, chute, "/hello")) == {"greeting": "still here"}
        await call(miner, Announce(chutes=[]))
        await until(lambda: not miner.manager.instances, timeout=15)
    finally:
        await shut(miner)
