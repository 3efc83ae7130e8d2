"""End to end on the devnet: an axon in its own process, a dendrite here, the metagraph from the chain."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from node.wallets import create_devnet_wallet
from chain.devnet import DevnetChain, DevnetLedger
from protocol import errors
from protocol.dendrite import Dendrite
from protocol.synapse import Echo, Ping
from tests.support import ROOT, free_port

pytestmark = pytest.mark.slow
NETUID = 3
SCRIPT = Path(__file__).with_name("devnet_echo_axon.py")


@pytest.fixture
def devnet(tmp_path):
    """A devnet with a staked validator (who gets the permit) and an unstaked miner."""
    wallet_path = tmp_path / "wallets"
    wallets = {name: create_devnet_wallet(name, "default", wallet_path) for name in ("validator", "miner", "outsider")}
    chain_file = tmp_path / "devnet.sqlite"
    ledger = DevnetLedger(chain_file, block_time=1.0)
    ledger.create_subnet(NETUID, wallets["validator"].coldkeypub.ss58_address)
    for name in ("validator", "miner"):
        ledger.register(NETUID, wallets[name].hotkey.ss58_address, wallets[name].coldkeypub.ss58_address)
    ledger.add_stake(NETUID, wallets["validator"].hotkey.ss58_address, 1000.0)
    return chain_file, wallet_path, wallets


@pytest.fixture
def miner_process(devnet, tmp_path):
    chain_file, wallet_path, _ = devnet
    port = free_port()
    log = tmp_path / "axon.log"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--devnet", str(chain_file), "--netuid", str(NETUID),
         "--wallet-path", str(wallet_path), "--wallet-name", "miner", "--port", str(port), "--min-stake", "10"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("w"), cwd=ROOT, text=True,
    )
    line = process.stdout.readline()
    if not line.startswith("READY"):
        process.kill()
        pytest.fail(f"the axon process did not start: {line!r} {log.read_text()[-2000:]}")
    yield process, int(line.split()[1])
    process.stdin.close()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def test_validator_reaches_devnet_miner_found_on_the_metagraph(devnet, miner_process):
    chain_file, _, wallets = devnet
    process, port = miner_process
    async with DevnetChain(chain_file) as chain:
        graph = await chain.metagraph(NETUID)
    validator = graph.by_hotkey(wallets["validator"].hotkey.ss58_address)
    miner = graph.by_hotkey(wallets["miner"].hotkey.ss58_address)
    assert validator.validator_permit and validator.stake >= 1000.0
    assert not miner.validator_permit
    assert miner.is_serving and (miner.axon.ip, miner.axon.port) == ("127.0.0.1", port), "the axon published itself"
    assert graph.serving_miners() == [miner]

    async with Dendrite(wallets["validator"]) as dendrite:
        [echo] = await dendrite.query(graph.serving_miners(), Echo(text="hello devnet"), timeout=10)
        pong = await dendrite.call(miner, Ping(), timeout=10)
    assert echo.ok, echo.error
    assert echo.response.text == f"hello devnet (from uid {validator.uid})"
    assert pong.ok and pong.response.hotkey == miner.hotkey

    async with Dendrite(wallets["outsider"]) as outsider:
        refused = await outsider.call(miner, Echo(text="let me in"), timeout=10)
    assert refused.http_status == 403 and isinstance(refused.error, errors.UnknownHotkey)
    assert process.poll() is None, "the axon process survives refusals"


async def test_axon_follows_metagraph_changes_on_the_devnet(devnet, miner_process):
    chain_file, _, wallets = devnet
    outsider = wallets["outsider"]
    async with DevnetChain(chain_file) as chain:
        miner = (await chain.metagraph(NETUID)).by_hotkey(wallets["miner"].hotkey.ss58_address)
        async with Dendrite(outsider) as dendrite:
            assert (await dendrite.call(miner, Echo(text="x"), timeout=10)).error.type == "unknown_hotkey"
            chain.ledger.register(NETUID, outsider.hotkey.ss58_address, outsider.coldkeypub.ss58_address)
            await asyncio.sleep(1.5)  # the axon refreshes its metagraph every 0.5 s
            assert (await dendrite.call(miner, Echo(text="x"), timeout=10)).error.type == "not_validator"
            chain.ledger.add_stake(NETUID, outsider.hotkey.ss58_address, 500.0)  # over the permit threshold
            await asyncio.sleep(1.5)
            result = await dendrite.call(miner, Echo(text="now a validator"), timeout=10)
    assert result.ok, result.error
