"""Several processes share one devnet file: no lost writes, no duplicate uids, no corruption."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

from chain.devnet import DevnetLedger

WORKERS = 4
HOTKEYS_PER_WORKER = 8
STAKE_ADDS = 5


def _worker(path: str, worker: int) -> list[int]:
    from bittensor.keyfiles import Keypair

    ledger = DevnetLedger(path)
    coldkey = Keypair.create_from_uri(f"//Cold{worker}").ss58_address
    uids = []
    for index in range(HOTKEYS_PER_WORKER):
        hotkey = Keypair.create_from_uri(f"//Hot{worker}-{index}").ss58_address
        uids.append(ledger.register(1, hotkey, coldkey))
        for _ in range(STAKE_ADDS):
            ledger.add_stake(1, hotkey, 1.0)
            ledger.metagraph(1)  # readers interleave with writers
    return uids


@pytest.mark.timeout(120)
def test_concurrent_writers_from_several_processes(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    DevnetLedger(path, block_time=1.0).create_subnet(1, tempo=2, stake_threshold=0)
    context = multiprocessing.get_context("spawn")
    with context.Pool(WORKERS) as pool:
        results = pool.starmap(_worker, [(path, worker) for worker in range(WORKERS)])

    all_uids = sorted(uid for uids in results for uid in uids)
    assert all_uids == list(range(WORKERS * HOTKEYS_PER_WORKER))  # unique, dense

    graph = DevnetLedger(path).metagraph(1)
    assert len(graph) == WORKERS * HOTKEYS_PER_WORKER
    # Every stake add landed; epochs may have paid emission on top, never less.
    for neuron in graph.neurons:
        assert neuron.stake >= STAKE_ADDS - 1e-9
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
