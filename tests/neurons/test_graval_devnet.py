"""GraVal end to end on the devnet: a real miner process offering a CPU pseudo-device and a
real validator process that verifies it and stores the result."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from node.wallets import coldkey_ss58, create_devnet_wallet
from tests.support import free_port
from tests.support.neurons import finish, start_neuron
from tests.support.store import sqlite_url
from store.queries import ValidatorStore


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_validator_verifies_a_miner_device_and_stores_it(tmp_path, devnet):
    miner = create_devnet_wallet("gm", "default", tmp_path / "wallets")
    owner = create_devnet_wallet("gowner", "validator", tmp_path / "wallets")
    for wallet in (owner, miner):
        devnet.register(1, wallet.hotkey.ss58_address, coldkey_ss58(wallet))
    devnet.add_stake(1, owner.hotkey.ss58_address, 1000)
    database = tmp_path / "validator.sqlite"
    processes = [
        start_neuron("miner", tmp_path, "--wallet.name", "gm", "--axon.port", str(free_port()), "--axon.ip", "127.0.0.1",
                     "--graval.cpu_devices", "1", "--graval.cpu_memory_mb", "16"),
        start_neuron("validator", tmp_path, "--wallet.name", "gowner", "--wallet.hotkey", "validator",
                     "--graval.allow_cpu", "--database_url", sqlite_url(database)),
    ]
    try:
        rows = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not rows:
            await asyncio.sleep(1)
            if database.exists():
                store = await ValidatorStore.open(sqlite_url(database))
                try:
                    rows = await store.latest_verifications()
                finally:
                    await store.close()
        assert len(rows) == 1, "the validator stored no verification within 90 s"
        (row,) = rows.values()
        assert row.ok and row.reason == "ok" and row.miner_hotkey == miner.hotkey.ss58_address
        assert row.uuid.startswith("CPU-") and row.model_id == "cpu" and row.throughput_macs_s > 0
    finally:
        for process in processes:
            process.send_signal(signal.SIGINT)
        outputs = [finish(process) for process in processes]
    assert all(code == 0 for code, _ in outputs), outputs
