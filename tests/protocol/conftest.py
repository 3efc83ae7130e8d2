"""Fixtures for the wire tests: real wallets, a fixed metagraph, real axons on free ports.

The metagraph (netuid 7) holds: the miner (uid 0, serves the axon), ``validator``
(permit, 1000 TAO), ``whale`` (permit, 10000 TAO), ``minnow`` (permit, 1 TAO: below the
10 TAO minimum the axons here require) and ``nopermit`` (5000 TAO, no permit).
``stranger`` is a real wallet that is not registered.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from protocol.options import AxonSettings
from node.wallets import create_devnet_wallet
from chain.base import Metagraph
from protocol.axon import Axon, Caller
from protocol.dendrite import Dendrite
from protocol.synapse import Echo, EchoResponse
from tests.support import free_port
from tests.support.network import NETUID, RecordingNonceStore, Spy, StaticChain, neuron

MIN_STAKE = 10.0
WALLET_NAMES = ("miner", "validator", "whale", "minnow", "nopermit", "stranger")


@pytest.fixture(scope="session")
def wallets(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("wallets")
    return SimpleNamespace(**{name: create_devnet_wallet(name, "default", root) for name in WALLET_NAMES})


@pytest.fixture
def chain(wallets) -> StaticChain:
    graph = Metagraph(
        netuid=NETUID,
        block=100,
        neurons=(
            neuron(0, wallets.miner, stake=0.0, permit=False),
            neuron(1, wallets.validator, stake=1000.0, permit=True),
            neuron(2, wallets.whale, stake=10000.0, permit=True),
            neuron(3, wallets.minnow, stake=1.0, permit=True),
            neuron(4, wallets.nopermit, stake=5000.0, permit=False),
        ),
    )
    return StaticChain(graph)


@pytest.fixture
async def make_axon(wallets, chain):
    """Start a real axon serving Echo; returns a namespace with axon, spy, store and url."""
    started: list[Axon] = []

    async def factory(*, wallet=None, handler=None, synapse=Echo, nonce_store=None, axon_kwargs=None, **settings):
        spy = Spy()

        async def echo(request: Echo, caller: Caller) -> EchoResponse:
            spy.calls.append((request, caller))
            return EchoResponse(text=request.text)

        store = nonce_store if nonce_store is not None else RecordingNonceStore()
        options = {"ip": "127.0.0.1", "port": free_port(), "min_stake": MIN_STAKE, "require_permit": True}
        options.update(settings)
        axon = Axon(wallet or wallets.miner, chain, NETUID, AxonSettings(**options), nonce_store=store, **(axon_kwargs or {}))
        axon.attach(synapse, handler or echo)
        await axon.start()
        started.append(axon)
        return SimpleNamespace(axon=axon, spy=spy, store=store, url=axon.url, hotkey=axon.hotkey)

    yield factory
    for axon in started:
        await axon.stop()


@pytest.fixture
async def echo_axon(make_axon):
    return await make_axon()


@pytest.fixture
async def dendrite(wallets):
    async with Dendrite(wallets.validator) as client:
        yield client
