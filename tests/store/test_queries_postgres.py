"""ValidatorStore (``store.queries``) on a real PostgreSQL server (``tests.support.postgres_server``),
each test on a fresh database: what only a shared server brings up, beyond the tests of
``test_queries.py`` that run on both backends: 64-bit values, exact doubles, booleans,
reopening, and replicas opening and writing at once."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy import func, select, text

from tests.support.postgres_server import needs_postgres
from tests.support.store import NOW, call, count, verified
from validator.graval.session import DeviceResult
from store.queries import ORGANIC, SYNTHETIC, ChuteSums, ValidatorStore
from store.tables import Invocation, WeightSubmission

pytestmark = [*needs_postgres, pytest.mark.parametrize("store_url", ["postgres"], indirect=True)]  # Postgres only


async def test_reopening_the_store_keeps_everything(store_url):
    first = await ValidatorStore.open(store_url)
    try:
        await first.upsert_miners([dict(hotkey="m1", uid=1, coldkey="c1", first_seen_at=NOW, last_seen_at=NOW)])
        await first.record_device_results([verified("m1", "GPU-a", True, NOW)])
        await first.record_invocations([call("m1", "echo", compute_s=1.5), call("m1", "echo", source=ORGANIC)])
        await first.save_scores(3, 30, {"m1": 0.75}, {"m1": 0.7}, {"m1": 1}, NOW)
        await first.record_weights(block=30, ok=True, uids=[1], weights=[1.0], version_key=1, commit_reveal=True,
                                   message="ok", now=NOW)
    finally:
        await first.close()
    again = await ValidatorStore.open(store_url)  # create_all on existing tables is a no-op
    try:
        assert set(await again.miners()) == {"m1"}
        assert set(await again.latest_verifications()) == {("m1", "GPU-a")}
        assert (await again.device_owners())["GPU-a"].hotkey == "m1"
        assert await again.load_scores() == ({"m1": 0.75}, 3)
        last = await again.last_weights()
        assert (last.block, last.commit_reveal, json.loads(last.uids)) == (30, True, [1])
        assert await again.last_invocation_id() == 2
        activity = (await again.activity_since(NOW - 1))["m1"]
        assert (activity.compute_seconds, activity.invocations_ok, activity.organic_ok) == (1.5, 2, 1)
    finally:
        await again.close()


async def test_a_large_gpus_memory_and_exact_doubles_round_trip(store):
    h100 = 80 * 2**30  # over 2**31: needs a 64-bit column (SQLite's INTEGER is; Postgres' is not)
    await store.record_device_results([DeviceResult("m1", "GPU-big", True, "ok", model_id="h100",
                                                    memory_bytes=h100, elapsed_s=1 / 3, verified_at=NOW + 0.123456)])
    row = (await store.latest_verifications())[("m1", "GPU-big")]
    assert (row.memory_bytes, row.elapsed_s, row.verified_at) == (h100, 1 / 3, NOW + 0.123456)
    await store.save_scores(1, 1, {"m1": 0.1 + 0.2}, {"m1": 1e-300}, {"m1": 1}, NOW)
    assert (await store.load_scores())[0] == {"m1": 0.1 + 0.2}, "double precision, not a 4-byte real"


async def test_invocation_sums_types_and_the_id_bounds(store):
    await store.record_invocations([call("m1", "echo", compute_s=0.25, latency_s=0.5, ttft_s=0.125),
                                    call("m1", "echo", ok=False, compute_s=8.0),
                                    call("m2", "llm", source=ORGANIC, compute_s=2.0, flagged=True)])
    upto = await store.last_invocation_id()
    await store.record_invocations([call("m1", "echo", compute_s=4.0, latency_s=1.0)])
    sums = {(part.hotkey, part.chute_id): part for part in await store.invocation_sums(upto_id=upto)}
    assert sums == {("m1", "echo"): ChuteSums("m1", "echo", 0.25, 1, 1, 2, 0, 0, 0.125),
                    ("m2", "llm"): ChuteSums("m2", "llm", 2.0, 1, 0, 0, 1, 1, 0.0)}
    for part in sums.values():  # plain Python numbers: no Decimal leaks out of Postgres' SUM
        assert type(part.compute_ok) is float and type(part.n_ok) is int and type(part.latency_sum) is float
    later = await store.invocation_sums(after_id=upto)
    assert later == [ChuteSums("m1", "echo", 4.0, 1, 1, 1, 0, 0, 1.0)]
    assert await store.invocation_sums(since=NOW + 1) == []
    async with store.sessions() as session:  # booleans are real booleans, filtered as such
        assert await session.scalar(select(func.count()).where(Invocation.flagged.is_(True))) == 1
        assert await session.scalar(select(func.count()).where(Invocation.source == SYNTHETIC,
                                                                Invocation.ok.is_(False))) == 1


async def test_two_replicas_open_one_new_database_at_once_and_share_it(store_url):
    for _ in range(3):
        stores = await asyncio.gather(*(ValidatorStore.open(store_url) for _ in range(3)))
        await asyncio.gather(*(s.close() for s in stores))
    stores = await asyncio.gather(ValidatorStore.open(store_url), ValidatorStore.open(store_url))
    try:
        # Both upsert the same miners at once (the validator and the API's directory refresh).
        await asyncio.gather(*(
            s.upsert_miners([dict(hotkey=f"m{i}", uid=i, coldkey="c", first_seen_at=NOW + n, last_seen_at=NOW + n)
                             for i in range(20)]) for n, s in enumerate(stores)))
        miners = await stores[1].miners()
        assert len(miners) == 20 and {m.first_seen_at for m in miners.values()} <= {NOW, NOW + 1}
        await asyncio.gather(*(s.record_invocations([call(f"m{i}", source=ORGANIC) for i in range(50)])
                               for s in stores))
        assert await count(stores[0], Invocation) == 100
        assert sum(a.organic_ok for a in (await stores[1].activity_since(NOW - 1)).values()) == 100
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_the_tables_are_created_with_postgres_types(store):
    async with store.engine.connect() as connection:
        columns = dict((await connection.execute(text(
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public'"))).all())
    assert columns["device_verifications.memory_bytes"] == "bigint"
    assert columns["invocations.ok"] == columns["weight_submissions.commit_reveal"] == "boolean"
    assert columns["scores.score"] == columns["invocations.created_at"] == "double precision"
    assert WeightSubmission.__tablename__ == "weight_submissions"
