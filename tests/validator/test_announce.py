"""The registry announcement (``validator.announce``) over real axons, and the revision filter.

Two real miner axons on an in-memory metagraph, each with recording ``Announce`` and
``DeliverBundle`` handlers written here: ``keen`` asks for the chute's revision and for a
revision nobody announced, ``idle`` asks for nothing. The registry is a real SQLite store
holding a chute deployed from a file this test writes, with calls and demand events.
"""

from __future__ import annotations

import hashlib
import time
from types import SimpleNamespace

import pytest

from canopy.bundle import build_bundle
from canopy.inspect import inspect_bundle
from chain.base import Metagraph
from node.wallets import create_devnet_wallet
from protocol.axon import Axon
from protocol.chutes import HostedChute
from protocol.dendrite import Dendrite
from protocol.options import AxonSettings
from protocol.registry import Announce, AnnounceResponse, BundleReceipt, DeliverBundle
from store.queries import ORGANIC, ValidatorStore
from store.registry import ChuteRegistry
from tests.support import free_port
from tests.support.network import NETUID, StaticChain, neuron
from tests.support.store import call, sqlite_url
from validator.announce import Announcer
from validator.loop import registry_chutes

CHUTE = '''
from pydantic import BaseModel
from canopy import Chute, NodeSelector

chute = Chute(username="alice", name="shout", node_selector=NodeSelector(gpu_count=1, min_vram_gb_per_gpu=0),
              concurrency=3)


class Words(BaseModel):
    text: str


@chute.cord(public_api_path="/shout")
async def shout(self, args: Words) -> dict:
    return {"text": args.text.upper()}
'''
UNKNOWN = "f" * 64


@pytest.fixture
async def registry(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "shout.py").write_text(CHUTE)
    bundle = build_bundle(str(tmp_path / "src" / "shout.py") + ":chute")
    info = inspect_bundle(bundle.data, revision=bundle.revision)
    store = await ValidatorStore.open(sqlite_url(tmp_path / "store.sqlite"))
    registry = ChuteRegistry(store.engine)
    record = await registry.put_revision("alice", "shout", bundle.revision, bundle.data, info.model_dump(mode="json"),
                                         public=True, max_instances=4, shutdown_after_seconds=90)
    yield SimpleNamespace(store=store, registry=registry, record=record, bundle=bundle)
    await store.close()


@pytest.fixture
async def miners(tmp_path):
    wallets = {name: create_devnet_wallet(f"announce-{name}", "default", tmp_path)
               for name in ("validator", "keen", "idle")}
    ports = {name: free_port() for name in ("keen", "idle")}
    graph = Metagraph(netuid=NETUID, block=10, neurons=[
        neuron(0, wallets["validator"], stake=1000.0, permit=True),
        neuron(1, wallets["keen"], stake=0.0, permit=False, port=ports["keen"]),
        neuron(2, wallets["idle"], stake=0.0, permit=False, port=ports["idle"])])
    chain = StaticChain(graph)
    seen: dict[str, list] = {"keen": [], "idle": []}
    axons = []
    for name in ("keen", "idle"):
        axon = Axon(wallets[name], chain, NETUID, AxonSettings(ip="127.0.0.1", port=ports[name]))

        async def announce(synapse: Announce, caller, name=name) -> AnnounceResponse:
            seen[name].append(synapse)
            wanted = [chute.revision for chute in synapse.chutes] + [UNKNOWN] if name == "keen" else []
            return AnnounceResponse(wanted=wanted)

        async def deliver(synapse: DeliverBundle, caller, name=name) -> BundleReceipt:
            seen[name].append(synapse)
            stored = hashlib.sha256(synapse.bundle()).hexdigest() == synapse.revision
            return BundleReceipt(revision=synapse.revision, stored=stored, reason="" if stored else "sha256 differs")

        axon.attach(Announce, announce)
        axon.attach(DeliverBundle, deliver)
        await axon.start()
        axons.append(axon)
    async with Dendrite(wallets["validator"]) as dendrite:
        yield SimpleNamespace(dendrite=dendrite, seen=seen, targets=[n for n in graph.neurons if n.axon is not None])
    for axon in axons:
        await axon.stop()


async def test_the_registry_is_announced_with_its_demand_and_bundles_go_only_where_wanted(registry, miners):
    now = time.time()
    chute_id, revision = registry.record.chute_id, registry.record.revision
    await registry.store.record_invocations([call("m1", chute_id, source=ORGANIC, at=now - 5) for _ in range(3)]
                                            + [call("m1", chute_id, at=now - 10_000)])  # outside the window
    await registry.registry.record_demand(chute_id, "no_capacity")
    await registry.registry.record_demand(chute_id, "warmup")
    announcer = Announcer(registry.registry, miners.dendrite, window_s=300)

    report = await announcer.announce(miners.targets, {(chute_id, revision): 2, (chute_id, "0" * 64): 9})
    await announcer.settle()  # the deliveries run beside the announcements, never holding them up

    assert (report.chutes, report.miners, report.answered) == (1, 2, 2)
    [announce] = [m for m in miners.seen["idle"] if isinstance(m, Announce)]
    [chute] = announce.chutes
    [keen_chute] = next(m for m in miners.seen["keen"] if isinstance(m, Announce)).chutes
    assert sorted([chute.rank, keen_chute.rank]) == [0, 1], "each miner its own place in the rendezvous order"
    assert (chute.chute_id, chute.owner, chute.name, chute.revision) == (chute_id, "alice", "shout", revision)
    assert (chute.concurrency, chute.max_instances, chute.shutdown_after_seconds) == (3, 4, 90)
    assert chute.node_selector["gpu_count"] == 1 and [c.public_api_path for c in chute.cords] == ["/shout"]
    demand = chute.demand.model_dump()
    assert demand.pop("idle_s") < 5, "the warmup just recorded is the latest demand"
    assert demand == {"calls": 3, "refused": 1, "instances": 2, "warmup": True}, \
        "calls of the window, refusals, warmups, and instances at the current revision only"
    assert [type(m).__name__ for m in miners.seen["idle"]] == ["Announce"], "a miner that wants nothing gets no bundle"
    delivered = [m for m in miners.seen["keen"] if isinstance(m, DeliverBundle)]
    assert [d.revision for d in delivered] == [revision], "a revision the announcement did not name is never sent"
    assert delivered[0].bundle() == registry.bundle.data
    assert report.delivered == [(miners.targets[0].hotkey, revision)] and report.refused == []


async def test_a_deleted_chute_is_no_longer_announced(registry, miners):
    announcer = Announcer(registry.registry, miners.dendrite)
    assert len((await announcer.announcement({})).chutes) == 1
    await registry.registry.delete("alice", "shout")
    assert (await announcer.announcement({})).chutes == []
    report = await announcer.announce(miners.targets, {})
    await announcer.settle()
    assert report.delivered == [] and all(m.chutes == [] for m in miners.seen["keen"] if isinstance(m, Announce))


def test_only_chutes_at_the_registry_revision_count():
    current = {"c1": "a" * 64, "c2": "b" * 64}
    hosted = [HostedChute(chute_id="c1", name="one", revision="a" * 64),
              HostedChute(chute_id="c2", name="tampered", revision="e" * 64),  # its own code under the registry's id
              HostedChute(chute_id="c3", name="unlisted", revision="c" * 64),  # no registry holds it
              HostedChute(chute_id="c1", name="unknown revision")]  # pinned code that could not be bundled
    assert [chute.name for chute in registry_chutes(hosted, current)] == ["one"]


def test_the_rendezvous_order_spreads_chutes_and_survives_a_miner_leaving():
    from protocol.registry import AnnouncedChute
    from validator.announce import rendezvous_order

    hotkeys = [f"5Miner{i:02d}" for i in range(12)]
    chutes = [AnnouncedChute(chute_id=f"c{i}", owner="o", name=f"n{i}", revision=f"{i:064x}") for i in range(20)]
    orders = {chute.chute_id: rendezvous_order(chute, hotkeys) for chute in chutes}
    assert len({order[0] for order in orders.values()}) >= 6, "different chutes rank different miners first"
    assert rendezvous_order(chutes[0], list(reversed(hotkeys))) == orders["c0"], "the order does not depend on the input order"
    gone = orders["c0"][3]
    assert rendezvous_order(chutes[0], [h for h in hotkeys if h != gone]) == [h for h in orders["c0"] if h != gone]


def test_verified_miners_are_ranked_first():
    from types import SimpleNamespace as Miner

    from protocol.registry import AnnouncedChute
    from validator.announce import ranked

    miners = [Miner(hotkey=f"5Miner{i:02d}") for i in range(6)]
    announce = Announce(chutes=[AnnouncedChute(chute_id=f"c{i}", owner="o", name=f"n{i}", revision=f"{i:064x}")
                                for i in range(8)])
    verified = {"5Miner04", "5Miner05"}
    per_miner = ranked(announce, miners, verified)
    for chute_index in range(8):
        ranks = {m.hotkey: per_miner[m.hotkey].chutes[chute_index].rank for m in miners}
        assert sorted(ranks[h] for h in verified) == [0, 1], "the miners the API routes to come first, for every chute"
        assert sorted(ranks.values()) == list(range(6))


async def test_a_miner_slow_to_take_a_bundle_holds_up_no_announcement(registry, miners, monkeypatch):
    """The deliveries run beside the announcements: one stalled miner delays nobody."""
    import asyncio

    announcer = Announcer(registry.registry, miners.dendrite, delivery_timeout_s=30)
    stalled = asyncio.Event()
    real_call = miners.dendrite.call

    async def slow_delivery(target, synapse, timeout=None, **kwargs):
        if isinstance(synapse, DeliverBundle):
            await stalled.wait()
        return await real_call(target, synapse, timeout=timeout, **kwargs)

    monkeypatch.setattr(miners.dendrite, "call", slow_delivery)
    started = time.monotonic()
    for _ in range(3):
        await announcer.announce(miners.targets, {})
    assert time.monotonic() - started < 5, "three announcements went out while the delivery hung"
    assert len(announcer._delivering) == 1, "one delivery per miner and revision at a time, not one per announcement"
    stalled.set()
    await announcer.settle()
    assert [type(m).__name__ for m in miners.seen["keen"]].count("DeliverBundle") == 1


async def test_the_demand_window_reaches_back_as_far_as_the_longest_shutdown_after(registry, miners):
    chute_id = registry.record.chute_id
    await registry.store.record_invocations([call("m1", chute_id, source=ORGANIC, at=time.time() - 500)])
    short = Announcer(registry.registry, miners.dendrite, window_s=60)
    [chute] = (await short.announcement({})).chutes  # shutdown_after_seconds 90: the window is 90 s
    assert chute.demand.idle_s is None and chute.demand.calls == 0
    await registry.registry.put_revision("alice", "shout", registry.bundle.revision, registry.bundle.data,
                                         registry.record.description, public=True, max_instances=4,
                                         shutdown_after_seconds=900)
    [chute] = (await short.announcement({})).chutes
    assert chute.demand.calls == 1 and 499 < chute.demand.idle_s < 510, "a call 500 s ago is inside a 900 s window"
