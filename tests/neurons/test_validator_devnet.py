"""The validator end to end on the devnet: real miner processes, a real validator process,
its real SQLite store, real weights on the devnet chain.

Miners: ``h1`` (one CPU pseudo-device), ``h2`` (two), ``cheat`` (claims one, commits random
roots: ``neurons.demo_cheater``) and ``twin-a``/``twin-b`` (two hotkeys of one coldkey, one
device each); every miner pins the echo chute in its hosting file, and the registry holds
the same code (so the same revision). One test walks through the issue's
checks in order, so the subnet starts once: first weights (h2 > h1 > cheat = 0, one twin
at 0), organic calls raising h1's score, SIGKILL and restart keeping the scores and the
verifications, and an offline miner decaying.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from node.wallets import coldkey_ss58, create_devnet_wallet
from chain.devnet import DevnetLedger
from tests.support import free_port
from tests.support.neurons import finish, start_neuron
from tests.support.store import sqlite_url
from tests.support.gateway import deploy_chutes, file_ref
from store.queries import ORGANIC, ValidatorStore

# Pinned by every miner's hosting file (as a file ref) and deployed in the registry: the same
# code, the same revision.
ECHO_MODULE = "examples.echo_chute:chute"
ECHO = file_ref(ECHO_MODULE)


async def deploy_echo(database: Path) -> None:
    store = await ValidatorStore.open(sqlite_url(database))
    try:
        await deploy_chutes(store.engine, [ECHO_MODULE])
    finally:
        await store.close()


def start_miner(home: Path, name: str, hotkey: str, devices: int, *, cheat: bool = False) -> subprocess.Popen:
    config = home / f"{name}-{hotkey}-chutes.toml"
    config.write_text(f'[[chutes]]\nref = "{ECHO}"\ninstances = 1\n')
    flags = ["--wallet.name", name, "--wallet.hotkey", hotkey, "--axon.ip", "127.0.0.1", "--axon.port", str(free_port()),
             "--graval.cpu_devices", str(devices), "--graval.cpu_memory_mb", "16", "--chutes.config", str(config),
             "--chutes.port_min", "20000", "--chutes.port_max", "29999"]
    return start_neuron("demo_cheater" if cheat else "miner", home, *flags)


def start_validator(home: Path, database: Path, metrics_port: int) -> subprocess.Popen:
    return start_neuron("validator", home, "--wallet.name", "owner", "--wallet.hotkey", "validator", "--graval.allow_cpu",
                        "--database_url", sqlite_url(database), "--validator.step_s", "2",
                        "--validator.synthetic_interval_s", "4", "--validator.synthetic_timeout_s", "20",
                        "--validator.metrics_port", str(metrics_port), "--validator.history_every_steps", "1",
                        "--wandb.mode", "disabled")


async def read(database: Path, query):
    store = await ValidatorStore.open(sqlite_url(database))
    try:
        return await query(store)
    finally:
        await store.close()


async def wait_for(database: Path, query, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if database.exists():
            value = await read(database, query)
            if value:
                return value
        await asyncio.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


async def latest_history(database: Path, hotkey: str, after_step: int = 0):
    rows = await read(database, lambda store: store.score_history(hotkey))
    return [row for row in rows if row.step > after_step]


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_validator_scores_verifies_and_sets_weights_on_the_devnet(tmp_path):
    wallets = tmp_path / "wallets"
    ledger = DevnetLedger(tmp_path / "devnet.sqlite", block_time=1.0)
    ledger.create_subnet(1, tempo=6, weights_rate_limit=2, stake_threshold=100)
    owner = create_devnet_wallet("owner", "validator", wallets)
    # test name -> (wallet name, hotkey name, CPU pseudo-devices)
    plan = {"h1": ("h1", "default", 1), "h2": ("h2", "default", 2), "cheat": ("cheat", "default", 1),
            "twins-a": ("twins", "a", 1), "twins-b": ("twins", "b", 1)}
    hk = {}
    for name, (wallet_name, hotkey, _) in plan.items():
        wallet = create_devnet_wallet(wallet_name, hotkey, wallets)
        ledger.register(1, wallet.hotkey.ss58_address, coldkey_ss58(wallet))
        hk[name] = wallet.hotkey.ss58_address
    ledger.register(1, owner.hotkey.ss58_address, coldkey_ss58(owner))
    ledger.add_stake(1, owner.hotkey.ss58_address, 1000)
    uid = {name: ledger.metagraph(1).by_hotkey(hotkey).uid for name, hotkey in hk.items()}
    assert len({coldkey_ss58(create_devnet_wallet("twins", h, wallets)) for h in ("a", "b")}) == 1

    database, metrics_port = tmp_path / "validator.sqlite", free_port()
    miners = {name: start_miner(tmp_path, wallet_name, hotkey, devices, cheat=(name == "cheat"))
              for name, (wallet_name, hotkey, devices) in plan.items()}
    validator = None
    try:
        # The miners publish their axons at start-up; the validator starts once all five serve,
        # so that its first weights judge all of them.
        deadline = time.monotonic() + 90
        while len(ledger.metagraph(1).serving_miners()) < len(plan):
            assert time.monotonic() < deadline, "the miners did not serve their axons within 90 s"
            await asyncio.sleep(0.5)
        await deploy_echo(database)
        validator = start_validator(tmp_path, database, metrics_port)
        # 1. The first weights: h2 > h1 > cheat = 0, and one twin keeps its score, the other 0.
        first = await wait_for(database, lambda s: s.last_weights(), 240, "the first weights")
        weights = dict(zip(json.loads(first.uids), json.loads(first.weights)))
        w = {name: weights.get(uid[name], 0.0) for name in hk}
        assert w["h2"] > w["h1"] > w["cheat"] == 0.0, w
        assert min(w["twins-a"], w["twins-b"]) == 0.0 < max(w["twins-a"], w["twins-b"]), w
        assert w["twins-a"] + w["twins-b"] <= w["h1"] * 1.05, w  # a split earns no more than one hotkey
        assert first.version_key > 0 and first.ok
        cheat_rows = await read(database, lambda s: s.verifications_of(hk["cheat"]))
        assert cheat_rows and not any(row.ok for row in cheat_rows)
        assert {row.reason for row in cheat_rows} <= {"bad_commitment", "bad_opening", "wrong_product"}

        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                exposition = await response.text()
        assert 'canopy_validator_challenges_total{reason="ok",result="pass"}' in exposition
        assert "canopy_validator_steps_total" in exposition and "canopy_validator_weights_set_total" in exposition

        # 2. Organic calls recorded by the API (same store) raise the serving miner's score.
        synthetic = await wait_for(database, lambda s: s.activity_since(0), 30, "synthetic calls")
        assert synthetic[hk["h1"]].synthetic_ok > 0 and synthetic[hk["h2"]].synthetic_ok > 0
        before = (await latest_history(database, hk["h1"]))[-1]
        chute = next(iter(synthetic[hk["h1"]].latency_by_chute))
        now = time.time()
        await read(database, lambda s: s.record_invocations(
            dict(miner_hotkey=hk["h1"], chute_id=chute, source=ORGANIC, ok=True, compute_s=30.0, latency_s=0.5,
                 created_at=now) for _ in range(20)))
        after = await wait_for(database, lambda s: latest_history(database, hk["h1"], before.step + 1), 30,
                               "a scored step after the organic calls")
        assert after[-1].raw > before.raw * 1.1, (before.raw, after[-1].raw)

        # 3. SIGKILL mid-run, restart: scores, step count and verifications carry on.
        verified_before = len(await read(database, lambda s: s.verifications_of(hk["h1"])))
        validator.send_signal(signal.SIGKILL)
        validator.wait(timeout=10)
        scores_at_kill, step_at_kill = await read(database, lambda s: s.load_scores())
        validator = start_validator(tmp_path, database, free_port())
        resumed = await wait_for(database, lambda s: latest_history(database, hk["h1"], step_at_kill), 60,
                                 "a step after the restart")
        assert resumed[0].step == step_at_kill + 1
        assert resumed[0].score >= 0.85 * scores_at_kill[hk["h1"]], (scores_at_kill[hk["h1"]], resumed[0].score)
        assert len(await read(database, lambda s: s.verifications_of(hk["h1"]))) == verified_before  # no re-proof

        # 4. A miner that goes offline decays.
        miners["h2"].send_signal(signal.SIGINT)
        finish(miners["h2"])
        offline_from = (await latest_history(database, hk["h2"]))[-1].step
        later = await wait_for(database, lambda s: latest_history(database, hk["h2"], offline_from + 3), 40,
                               "steps after h2 went offline")
        decay = await latest_history(database, hk["h2"], offline_from)
        assert all(row.raw == 0 for row in decay[1:]), [row.raw for row in decay]
        assert decay[-1].score < decay[0].score and later
    finally:
        processes = {"validator": validator, **miners} if validator is not None else dict(miners)
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        outputs = {name: finish(process) for name, process in processes.items()}
        print(outputs.get("validator", (0, ""))[1][-20000:])  # shown by pytest when the test fails
    assert outputs["validator"][0] == 0, outputs["validator"][1][-3000:]
