"""DevnetChain: the Chain port's async surface over the ledger, with real wallets."""

from __future__ import annotations

import pytest

from node.config import load_settings
from node.wallets import create_devnet_wallet
from chain import connect
from chain.base import NotRegistered, RateLimited, SubnetNotFound
from chain.devnet import DevnetChain


@pytest.fixture
def wallets(tmp_path):
    return {name: create_devnet_wallet(name, "default", tmp_path / "wallets") for name in ("validator", "miner")}


async def test_register_serve_stake_and_weights_through_the_port(tmp_path, wallets):
    chain = DevnetChain(tmp_path / "c.sqlite", block_time=0.05)
    chain.ledger.create_subnet(1, weights_rate_limit=0, stake_threshold=10)
    validator, miner = wallets["validator"], wallets["miner"]
    assert await chain.register(validator, 1) == 0
    assert await chain.register(miner, 1) == 1
    assert await chain.register(miner, 1) == 1
    chain.ledger.add_stake(1, validator.hotkey.ss58_address, 50)
    await chain.serve_axon(miner, 1, "127.0.0.1", 8091)

    graph = await chain.metagraph(1)
    assert [n.validator_permit for n in graph.neurons] == [True, False]
    assert [n.hotkey for n in graph.serving_miners()] == [miner.hotkey.ss58_address]
    assert graph.by_uid(1).axon.url == "http://127.0.0.1:8091"

    submission = await chain.set_weights(validator, 1, [1], [1.0], version_key=3)
    assert submission.uids == (1,) and submission.weights == (1.0,)
    assert await chain.blocks_since_last_update(1, 0) >= 0
    assert (await chain.hyperparameters(1)).stake_threshold == 10
    assert await chain.uid_of(1, miner.hotkey.ss58_address) == 1


async def test_refusals_are_typed(tmp_path, wallets):
    chain = DevnetChain(tmp_path / "c.sqlite", block_time=60)
    with pytest.raises(SubnetNotFound):
        await chain.metagraph(1)
    chain.ledger.create_subnet(1, weights_rate_limit=100, stake_threshold=0)
    with pytest.raises(NotRegistered):
        await chain.serve_axon(wallets["miner"], 1, "127.0.0.1", 8091)
    await chain.register(wallets["validator"], 1)
    chain.ledger.add_stake(1, wallets["validator"].hotkey.ss58_address, 1)
    with pytest.raises(RateLimited) as refused:
        await chain.set_weights(wallets["validator"], 1, [0], [1.0])
    assert refused.value.retry_in_blocks == 100


def test_connect_picks_the_devnet_from_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("CANOPY_HOME", str(tmp_path))
    settings = load_settings(["--devnet.block_time", "2"])
    chain = connect(settings.network, settings.devnet)
    assert isinstance(chain, DevnetChain)
    assert chain.ledger.path == tmp_path / "devnet.sqlite" and chain.ledger.block_time == 2
