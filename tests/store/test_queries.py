"""ValidatorStore (``store.queries``) on SQLite and on PostgreSQL: miners, verifications,
invocations and the window aggregates, scores and their history, weight submissions, pruning,
and two stores opening one database at the same time.

The ``store`` and ``store_url`` fixtures (``tests/store/conftest.py``) run each test on both
backends; what only one of them has (WAL mode, SQLite's file locks) takes its own URL.
Postgres' types and replicas are in ``test_queries_postgres.py``."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading

import pytest

from store.queries import ORGANIC, SYNTHETIC, MinerActivity, ValidatorStore
from store.tables import DeviceVerification, Invocation, ScoreHistory
from tests.support.store import NOW, call, count, sqlite_url, verified


async def test_sqlite_runs_in_wal_mode(tmp_path):
    store = await ValidatorStore.open(sqlite_url(tmp_path / "wal.sqlite"))
    try:
        async with store.engine.connect() as connection:
            assert (await connection.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await connection.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 10000
        await store.upsert_miners([dict(hotkey="m1", uid=1, coldkey="c1", first_seen_at=NOW, last_seen_at=NOW)])
        assert (tmp_path / "wal.sqlite-wal").exists()
    finally:
        await store.close()


async def test_upsert_inserts_then_updates_and_keeps_first_seen(store):
    await store.upsert_miners([dict(hotkey="m1", uid=1, coldkey="c1", axon="http://a:1", first_seen_at=NOW,
                                    last_seen_at=NOW),
                               dict(hotkey="m2", uid=2, coldkey="c2", first_seen_at=NOW, last_seen_at=NOW)])
    await store.upsert_miners([dict(hotkey="m1", uid=5, coldkey="c1", axon="http://b:2", first_seen_at=NOW + 50,
                                    last_seen_at=NOW + 50, last_reachable_at=NOW + 50, devices_claimed=2)])
    await store.upsert_miners([])
    miners = await store.miners()
    assert set(miners) == {"m1", "m2"}
    m1 = miners["m1"]
    assert (m1.uid, m1.axon, m1.devices_claimed) == (5, "http://b:2", 2)
    assert m1.first_seen_at == NOW and m1.last_seen_at == m1.last_reachable_at == NOW + 50
    assert miners["m2"].last_reachable_at is None and miners["m2"].devices_claimed == 0


async def test_latest_verification_per_hotkey_and_uuid_and_the_hotkey_filter(store):
    await store.record_device_results([verified("m1", "GPU-a", True, NOW), verified("m1", "GPU-b", True, NOW)])
    await store.record_device_results([verified("m1", "GPU-a", False, NOW + 10)])
    # m2 claims m1's GPU-b too: refused (first verified wins), and m1's row of it stays m1's latest
    refused = await store.record_device_results([verified("m2", "GPU-b", True, NOW + 20),
                                                 verified("m2", "GPU-c", True, NOW + 20)])
    assert refused == [("m2", "GPU-b", "m1")]
    latest = await store.latest_verifications()
    assert {key: (row.ok, row.reason) for key, row in latest.items()} == {
        ("m1", "GPU-a"): (False, "bad_opening"), ("m1", "GPU-b"): (True, "ok"),
        ("m2", "GPU-b"): (False, "uuid_taken"), ("m2", "GPU-c"): (True, "ok")}
    assert latest[("m1", "GPU-a")].verified_at == NOW + 10 and "m1" in latest[("m2", "GPU-b")].detail
    mine = await store.latest_verifications(miner_hotkey="m1")
    assert set(mine) == {("m1", "GPU-a"), ("m1", "GPU-b")}
    assert set(await store.latest_verifications(miner_hotkey="m3")) == set()
    assert {uuid: owner.hotkey for uuid, owner in (await store.device_owners()).items()} == {
        "GPU-a": "m1", "GPU-b": "m1", "GPU-c": "m2"}  # a failure keeps the owner
    history = await store.verifications_of("m1")
    assert [(row.uuid, row.ok) for row in history] == [("GPU-a", False), ("GPU-b", True), ("GPU-a", True)]
    assert len(await store.verifications_of("m1", limit=1)) == 1


async def test_first_verified_wins_even_within_one_batch_and_failures_claim_nothing(store):
    await store.record_device_results([verified("m1", "GPU-x", False, NOW)])  # a failure owns nothing
    assert await store.device_owners() == {}
    refused = await store.record_device_results([verified("m2", "GPU-x", True, NOW + 1),
                                                 verified("m3", "GPU-x", True, NOW + 1)])
    assert refused == [("m3", "GPU-x", "m2")]
    owner = (await store.device_owners())["GPU-x"]
    assert (owner.hotkey, owner.since, owner.pinned) == ("m2", NOW + 1, False)
    assert await store.record_device_results([verified("m2", "GPU-x", True, NOW + 2)]) == []  # its own again


async def test_operator_override_and_release_on_deregistration(store):
    await store.record_device_results([verified("m1", "GPU-a", True, NOW), verified("m1", "GPU-b", True, NOW),
                                       verified("m2", "GPU-c", True, NOW)])
    await store.set_device_owner("GPU-a", "m2", now=NOW + 5)  # reassigned: m1's claim is refused from now on
    assert await store.record_device_results([verified("m1", "GPU-a", True, NOW + 6)]) == [("m1", "GPU-a", "m2")]
    await store.set_device_owner("GPU-b", "m1", pinned=True, now=NOW + 7)
    released = await store.release_departed({"m2", "m3"})  # m1 deregistered: its unpinned devices are free
    assert released == [] and (await store.device_owners())["GPU-b"].pinned  # GPU-a is m2's now, GPU-b pinned
    released = await store.release_departed({"m1", "m3"})  # m2 left
    assert sorted(owner.uuid for owner in released) == ["GPU-a", "GPU-c"]
    assert set(await store.device_owners()) == {"GPU-b"}
    assert (await store.release_device("GPU-b")).hotkey == "m1" and await store.release_device("GPU-b") is None
    assert await store.record_device_results([verified("m3", "GPU-b", True, NOW + 9)]) == []  # free to claim
    assert (await store.device_owners("m3"))["GPU-b"].since == NOW + 9


async def test_two_replicas_passing_one_uuid_at_once_leave_one_owner(store_url):
    """Two stores (two processes' engines) recording a pass of one uuid for two hotkeys at once:
    one owner, the other refused, whatever the interleaving."""
    stores = [await ValidatorStore.open(store_url) for _ in range(2)]
    try:
        for round_ in range(5):
            uuid = f"GPU-race{round_}"
            refused = await asyncio.gather(*(store.record_device_results([verified(f"m{i}", uuid, True, NOW)])
                                             for i, store in enumerate(stores)))
            owner = (await stores[0].device_owners())[uuid].hotkey
            assert sorted(len(r) for r in refused) == [0, 1] and refused[int(owner[1:]) ^ 1] == [
                (f"m{int(owner[1:]) ^ 1}", uuid, owner)]
            latest = await stores[1].latest_verifications()
            assert [latest[(f"m{i}", uuid)].ok for i in range(2)] == [owner == "m0", owner == "m1"]
    finally:
        for store in stores:
            await store.close()


async def test_sweeps_are_recorded_and_the_last_one_read_back(store):
    assert await store.last_sweep() is None
    first = await store.start_sweep(now=NOW, miners=3)
    await store.finish_sweep(first, now=NOW + 30, devices=5, failed=1)
    second = await store.start_sweep(now=NOW + 3600, miners=2)
    last = await store.last_sweep()
    assert (last.id, last.started_at, last.finished_at, last.miners) == (second, NOW + 3600, None, 2)
    assert await store.prune(NOW + 4000) == 1 and (await store.last_sweep()).id == second  # the last one stays


async def test_a_bad_source_refuses_the_whole_batch(store):
    with pytest.raises(ValueError, match="source"):
        await store.record_invocations([call(), call(source="api")])
    assert await count(store, Invocation) == 0
    assert await store.record_invocations(call(source=s) for s in (SYNTHETIC, ORGANIC)) == 2
    assert await count(store, Invocation) == 2


async def test_activity_since_adds_up_the_window(store):
    await store.record_invocations([
        call("m1", "echo", compute_s=2.0, latency_s=1.0, ttft_s=0.2),
        call("m1", "echo", compute_s=3.0, latency_s=3.0),          # no ttft: its latency counts
        call("m1", "llm", compute_s=4.0, latency_s=0.5, flagged=True),
        call("m1", "echo", ok=False, compute_s=100.0, latency_s=9.0, error="timeout"),
        call("m1", "echo", source=ORGANIC, compute_s=10.0, latency_s=50.0),
        call("m1", "other", source=ORGANIC, ok=False, compute_s=7.0),
        call("m2", "echo", ok=False, error="refused"),
        call("m1", "echo", compute_s=1000.0, at=NOW - 100),            # before the window
        call("old", "echo", compute_s=1.0, at=NOW - 100),
    ])
    activity = await store.activity_since(NOW - 10)
    assert set(activity) == {"m1", "m2"}
    m1 = activity["m1"]
    assert m1.compute_seconds == pytest.approx(2 + 3 + 4 + 10)   # successful calls only
    assert (m1.invocations_ok, m1.chutes_served, m1.synthetic_ok, m1.synthetic_total) == (4, 2, 3, 4)
    assert (m1.flagged, m1.organic_ok) == (1, 1)
    # synthetic and ok only; time to first token where measured
    assert m1.latency_by_chute == pytest.approx({"echo": (0.2 + 3.0) / 2, "llm": 0.5})
    assert activity["m2"] == MinerActivity(synthetic_total=1)
    assert (await store.activity_since(NOW - 1000))["m1"].compute_seconds == pytest.approx(1019)
    assert await store.activity_since(NOW + 1) == {}


async def test_a_steered_organic_call_counts_nowhere_in_the_window(store):
    """The caller chose the miner (uids/top_n): served and kept, but no compute, success or chute."""
    await store.record_invocations([
        call("m1", "echo", source=ORGANIC, compute_s=10.0),
        call("m1", "echo", source=ORGANIC, compute_s=1e6, steered=True),
        call("m1", "llm", source=ORGANIC, compute_s=5.0, steered=True),
        call("m2", "echo", source=ORGANIC, compute_s=7.0, steered=True),
    ])
    activity = await store.activity_since(NOW - 10)
    m1 = activity["m1"]
    assert (m1.compute_seconds, m1.invocations_ok, m1.chutes_served, m1.organic_ok) == (pytest.approx(10.0), 1, 1, 1)
    assert activity.get("m2", MinerActivity()) == MinerActivity()
    assert await count(store, Invocation) == 4
    with pytest.raises(ValueError, match="steered"):
        await store.record_invocations([call(source=SYNTHETIC, steered=True)])


async def test_scores_round_trip_and_history(store):
    assert await store.load_scores() == ({}, 0)
    await store.save_scores(1, 100, {"m1": 0.5, "m2": 0.25}, {"m1": 0.5, "m2": 0.25, "m3": 0.0}, {"m1": 1, "m2": 2}, NOW)
    await store.save_scores(2, 105, {"m1": 0.45}, {"m1": 0.4, "m2": 0.0}, {"m1": 1}, NOW + 5)
    assert await store.load_scores() == ({"m1": 0.45}, 2)
    history = await store.score_history("m1")
    assert [(row.step, row.block, row.uid, row.raw, row.score) for row in history] == [
        (1, 100, 1, 0.5, 0.5), (2, 105, 1, 0.4, 0.45)]
    m2 = await store.score_history("m2")
    assert [(row.step, row.score, row.uid) for row in m2] == [(1, 0.25, 2), (2, 0.0, None)]
    assert [row.step for row in await store.score_history("m1", limit=1)] == [2]  # the newest, oldest first
    assert [(row.raw, row.score) for row in await store.score_history("m3")] == [(0.0, 0.0)]


async def test_weight_submissions_and_the_last_good_one(store):
    assert await store.last_weights() is None
    await store.record_weights(block=10, ok=True, uids=[1, 3], weights=[0.25, 0.75], version_key=42,
                               commit_reveal=False, message="set", now=NOW)
    await store.record_weights(block=20, ok=False, uids=[1], weights=[1.0], version_key=42, commit_reveal=False,
                               message="RateLimited: " + "x" * 5000, now=NOW + 10)
    good = await store.last_weights()
    assert (good.block, good.ok, json.loads(good.uids), json.loads(good.weights), good.version_key) == (
        10, True, [1, 3], [0.25, 0.75], 42)
    newest = await store.last_weights(ok_only=False)
    assert newest.block == 20 and not newest.ok and len(newest.message) == 2000


async def test_prune_keeps_the_newest_verification_of_every_device(store):
    await store.record_device_results([verified("m1", "GPU-a", True, NOW - 300), verified("m1", "GPU-a", True, NOW - 200),
                                       verified("m1", "GPU-b", False, NOW - 300), verified("m2", "GPU-c", True, NOW - 200),
                                       verified("m2", "GPU-c", False, NOW)])
    await store.record_invocations([call(at=NOW - 200), call(at=NOW - 200), call(at=NOW)])
    await store.save_scores(1, 1, {"m1": 0.5}, {"m1": 0.5}, {}, NOW - 200)
    await store.save_scores(2, 2, {"m1": 0.5}, {"m1": 0.5}, {}, NOW)
    gone = await store.prune(NOW - 100)
    assert gone == 2 + 2 + 1  # GPU-a's older row, GPU-c's older row; two invocations; one history row
    latest = await store.latest_verifications()
    assert {uuid: (row.verified_at, row.ok) for (_, uuid), row in latest.items()} == {
        "GPU-a": (NOW - 200, True), "GPU-b": (NOW - 300, False), "GPU-c": (NOW, False)}
    assert await count(store, DeviceVerification) == 3
    assert await count(store, Invocation) == 1 and await count(store, ScoreHistory) == 1
    assert await store.load_scores() == ({"m1": 0.5}, 2)  # current scores are never pruned


async def test_two_stores_open_one_new_file_at_once(tmp_path):
    # Deterministic form of the race: another opener is mid-way through creating the file (it holds
    # the write lock of a file not yet in WAL mode) and lets go 1 s later. Opening must wait it out.
    path = tmp_path / "busy.sqlite"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE creating (x)")
    other.execute("BEGIN")
    other.execute("INSERT INTO creating VALUES (1)")
    release = threading.Timer(1.0, lambda: (other.execute("COMMIT"), other.close()))
    release.start()
    try:
        await (await ValidatorStore.open(sqlite_url(path))).close()
    finally:
        release.join()
    # The race itself (two stores, one new file, asyncio.gather): it fails a few percent of the time.
    for attempt in range(20):
        url = sqlite_url(tmp_path / f"race{attempt}.sqlite")
        stores = await asyncio.gather(ValidatorStore.open(url), ValidatorStore.open(url))
        try:
            await stores[0].upsert_miners([dict(hotkey="m1", uid=1, coldkey="c", first_seen_at=NOW, last_seen_at=NOW)])
            assert set(await stores[1].miners()) == {"m1"}
        finally:
            await asyncio.gather(*(s.close() for s in stores))
