"""The pm2 entry points as an operator meets them: real processes, real devnet, real wallets."""

from __future__ import annotations

import signal
import time

import aiohttp
import pytest

from node.wallets import coldkey_ss58, create_devnet_wallet
from tests.support import free_port
from tests.support.neurons import finish, start_neuron

@pytest.mark.parametrize("role", ["miner", "validator", "api"])
def test_help_explains_the_flags(role, tmp_path):
    code, output = finish(start_neuron(role, tmp_path, "--help"))
    assert code == 0
    for flag in ("--netuid", "--network", "--wallet.name", "--wallet.hotkey", "--axon.port", "--logging.debug"):
        assert flag in output


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--network", "mars"], "--network: unknown network 'mars'"),
        (["--wallet.name", "ghost"], "canopy devnet register --wallet.name ghost --wallet.hotkey default"),
        (["--netuid", "9"], "canopy devnet init --netuid 9"),
    ],
)
def test_start_up_errors_are_one_line_with_the_fix(flags, expected, tmp_path, devnet):
    create_devnet_wallet("default", "default", tmp_path / "wallets")  # so the subnet check is reached
    code, output = finish(start_neuron("miner", tmp_path, *flags))
    assert code != 0
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0] and lines[0].startswith("miner: error:")


def test_unregistered_hotkey_names_the_register_command(tmp_path, devnet):
    create_devnet_wallet("lonely", "default", tmp_path / "wallets")
    code, output = finish(start_neuron("validator", tmp_path, "--wallet.name", "lonely"))
    assert code == 1 and "is not registered on netuid 1" in output and "canopy devnet register --netuid 1" in output


@pytest.mark.slow
async def test_miner_serves_on_chain_and_the_api_reports_it(tmp_path, devnet):
    miner = create_devnet_wallet("m", "default", tmp_path / "wallets")
    owner = create_devnet_wallet("owner", "validator", tmp_path / "wallets")
    for wallet in (owner, miner):
        devnet.register(1, wallet.hotkey.ss58_address, coldkey_ss58(wallet))
    devnet.add_stake(1, owner.hotkey.ss58_address, 1000)
    miner_port, api_port = free_port(), free_port()
    processes = [
        start_neuron("miner", tmp_path, "--wallet.name", "m", "--axon.port", str(miner_port), "--axon.ip", "127.0.0.1"),
        start_neuron("api", tmp_path, "--wallet.name", "owner", "--wallet.hotkey", "validator",
                     "--axon.port", str(api_port), "--axon.ip", "127.0.0.1"),
    ]
    try:
        deadline = time.monotonic() + 30
        health = None
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                try:
                    async with session.get(f"http://127.0.0.1:{api_port}/health") as response:
                        health = await response.json()
                    if health["serving_miners"] == 1:
                        break
                except aiohttp.ClientError:
                    pass
                time.sleep(0.2)
        assert health is not None and health["serving_miners"] == 1 and health["uids"] == 2
        axon = devnet.metagraph(1).by_uid(1).axon
        assert (axon.ip, axon.port) == ("127.0.0.1", miner_port)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            code, output = finish(process)
            assert code == 0, output
            assert "stopped" in output
