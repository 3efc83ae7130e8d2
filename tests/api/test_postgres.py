"""The public API's storage on a real PostgreSQL server (``tests.support.postgres_server``), the way
several replicas share it: keys and their credits (two engines reserving at once never
overdraw), the request log with its reads and retention, idempotency records claimed by two
replicas at once, and one gateway request served end to end with every table on Postgres."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from api.app import ApiConfig, build_app
from api.directory import MinerDirectory
from api.credits import CreditLedger
from api.idempotency import IdempotencyConflict, IdempotencyMismatch, IdempotencyStore, request_hash
from api.keys import KeyError_, KeyRejected, KeyStore, RateRule
from api.limits import MemoryRateLimiter
from api.requestlog import RequestLogger, RequestRecord, log_stats, prune_logs, query_logs
from store.api_tables import ApiKey, CreditLease, IdempotencyRecord, RequestLog
from api.upstream import Upstream
from tests.support.gateway import BROKEN, FLAKY, HONEST, MODEL, deploy_chutes
from tests.support.postgres_server import needs_postgres
from tests.support.network import NETUID
from store.queries import ValidatorStore
from store.tables import DeviceVerification, Invocation

# One loop for the module: the end-to-end test borrows the module-scoped ``gateway`` miners.
pytestmark = [*needs_postgres, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(loop_scope="module")
async def pg(postgres_url):
    """A ValidatorStore (its tables) plus the API's tables on a fresh Postgres database."""
    store = await ValidatorStore.open(postgres_url)
    assert store.engine.dialect.name == "postgresql" and store.engine.dialect.driver == "asyncpg"
    await KeyStore(store.engine).create_tables()
    yield store
    await store.close()


@pytest_asyncio.fixture(loop_scope="module")
async def replicas(pg, postgres_url):
    """Two more engines on the same database: two API replicas, each with its own connection pool."""
    engines = [create_async_engine(postgres_url) for _ in range(2)]
    yield engines
    for engine in engines:
        await engine.dispose()


# --- keys --------------------------------------------------------------------------------------


async def test_keys_create_authenticate_edit_list_delete(pg):
    keys = KeyStore(pg.engine)
    info, key = await keys.create("alice", credits=5, rate_limits=["10/60s"], default_strategy="top_n:3",
                                  models=["m2", "m1"], expires_at=time.time() + 3600)
    assert (info.credits, info.disabled, info.admin, info.models) == (5, False, False, ("m1", "m2"))
    _, bob_key = await keys.create("bob", admin=True)
    with pytest.raises(KeyError_, match="exists already"):
        await keys.create("alice")

    authed = await keys.authenticate(key)
    assert (authed.id, authed.name, authed.credits, authed.rate_limits) == (info.id, "alice", 5, (RateRule(10, 60),))
    assert (await keys.authenticate(bob_key)).admin is True
    assert [k.name for k in await keys.list()] == ["alice", "bob"]

    edited = await keys.edit("alice", credits=9, unset=frozenset({"models", "expires_at"}))
    assert (edited.credits, edited.models, edited.expires_at) == (9, None, None)
    assert (await keys.get("alice")).credits == 9
    await keys.edit("alice", disabled=True)
    with pytest.raises(KeyRejected) as refused:
        await keys.authenticate(key)
    assert refused.value.reason == "disabled"
    await keys.edit("bob", expires_at=time.time() - 1)
    with pytest.raises(KeyRejected) as refused:
        await keys.authenticate(bob_key)
    assert refused.value.reason == "expired"
    with pytest.raises(KeyRejected) as refused:
        await keys.authenticate(key + "x")
    assert refused.value.reason == "unknown"

    await keys.delete("bob")
    assert [k.name for k in await keys.list()] == ["alice"]
    with pytest.raises(KeyError_, match="no key named"):
        await keys.get("bob")


async def test_two_replicas_reserving_at_once_take_exactly_the_credits_there_are(pg, replicas):
    credits, attempts = 7, 40
    info, _ = await KeyStore(pg.engine).create("shared", credits=credits)
    ledgers = [CreditLedger(KeyStore(engine), replica=f"r{i}") for i, engine in enumerate(replicas)]
    start = asyncio.Event()

    async def one(i: int) -> bool:
        await start.wait()
        return await ledgers[i % 2].reserve(info)

    tasks = [asyncio.create_task(one(i)) for i in range(attempts)]
    await asyncio.sleep(0.05)
    start.set()
    taken = await asyncio.gather(*tasks)
    assert sum(taken) == credits, taken
    for ledger in ledgers:
        await ledger.sync()  # a heartbeat: what the leases hold unspent, for other processes to read
    row = await KeyStore(pg.engine).get("shared")
    assert row.credits == 0 and row.last_used_at is not None
    assert not await ledgers[0].reserve(info) and not await ledgers[1].reserve(info)
    ledgers[0].refund(info.id)
    ledgers[1].refund(info.id)
    ledgers[1].refund(info.id)
    for ledger in ledgers:
        await ledger.close()
    assert (await KeyStore(pg.engine).get("shared")).credits == 3, "refunds reach the balance, none lost"
    async with pg.sessions() as session:
        assert (await session.execute(select(func.count()).select_from(CreditLease))).scalar_one() == 0


async def test_a_big_balance_is_leased_in_shares_and_given_back_whole(pg, replicas):
    info, _ = await KeyStore(pg.engine).create("big", credits=10_000)
    ledgers = [CreditLedger(KeyStore(engine), replica=f"b{i}") for i, engine in enumerate(replicas)]
    taken = await asyncio.gather(*(ledgers[i % 2].reserve(info) for i in range(500)))
    assert all(taken)
    assert 9_500 <= (await KeyStore(pg.engine).get("big")).credits <= 10_000, "another process sees it a heartbeat late"
    for ledger in ledgers:
        await ledger.sync()
    assert (await KeyStore(pg.engine).get("big")).credits == 9_500
    for ledger in ledgers:
        await ledger.close()
    async with pg.sessions() as session:
        assert (await session.execute(select(ApiKey.credits).where(ApiKey.id == info.id))).scalar_one() == 9_500


async def test_unlimited_keys_always_reserve(pg, replicas):
    info, _ = await KeyStore(pg.engine).create("free")
    ledger = CreditLedger(KeyStore(replicas[0]))
    assert all(await asyncio.gather(*(ledger.reserve(info) for _ in range(5))))
    ledger.refund(info.id)
    await ledger.close()
    assert (await KeyStore(pg.engine).get("free")).credits is None


# --- request log -------------------------------------------------------------------------------


def record(request_id: str, *, key_id: int | None, status: int, tokens: tuple[int, int] = (0, 0), charged: int = 0,
           **fields) -> RequestRecord:
    return RequestRecord(id=request_id, route="/v1/chat/completions", key_id=key_id, status=status,
                         prompt_tokens=tokens[0], completion_tokens=tokens[1], charged=charged, **fields)


async def test_request_log_write_query_stats_and_prune(pg):
    logger = RequestLogger(pg.engine, log_prompts=True)
    logger.write(record("r1", key_id=1, status=200, tokens=(3, 5), charged=1, model="m", uid=4, hotkey="hk",
                        miners_tried=[4], prompt=[{"role": "user", "content": "hi"}], answer="ok"))
    logger.write(record("r2", key_id=1, status=502, error="no_miner", miners_tried=[4, 5]))
    logger.write(record("r3", key_id=2, status=200, tokens=(10, 20), charged=1))
    logger.write(record("r4", key_id=None, status=401, error="unknown"))
    await logger.drain()
    # Spread the rows over time (the logger stamps them with "now").
    async with pg.sessions.begin() as session:
        for offset, request_id in enumerate(["r1", "r2", "r3", "r4"]):
            row = await session.get(RequestLog, request_id)
            row.created_at = 1_000_000.0 + 10 * offset

    newest = await query_logs(pg.engine)
    assert [row.id for row in newest] == ["r4", "r3", "r2", "r1"]
    assert [row.id for row in await query_logs(pg.engine, key_id=1)] == ["r2", "r1"]
    assert [row.id for row in await query_logs(pg.engine, status=200, limit=1)] == ["r3"]
    assert [row.id for row in await query_logs(pg.engine, since=1_000_010.0, until=1_000_030.0)] == ["r3", "r2"]
    first = newest[-1]
    assert (first.uid, first.hotkey, json.loads(first.miners_tried), first.answer) == (4, "hk", [4], "ok")
    assert json.loads(first.prompt) == [{"role": "user", "content": "hi"}] and first.latency_ms >= 0

    stats = await log_stats(pg.engine)
    assert {k: stats[k] for k in ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens",
                                  "charged", "by_status")} == {
        "requests": 4, "errors": 2, "prompt_tokens": 13, "completion_tokens": 25, "total_tokens": 38, "charged": 2,
        "by_status": {"200": 2, "401": 1, "502": 1}}
    assert all(type(stats[k]) is int for k in ("requests", "errors", "prompt_tokens", "charged"))
    assert isinstance(stats["mean_latency_ms"], float)
    json.dumps(stats)  # what /admin/stats sends: no Decimal
    keyed = await log_stats(pg.engine, key_id=1, since=1_000_005.0)
    assert (keyed["requests"], keyed["errors"], keyed["by_status"]) == (1, 1, {"502": 1})
    empty = await log_stats(pg.engine, since=2_000_000.0)
    assert (empty["requests"], empty["total_tokens"], empty["mean_latency_ms"], empty["by_status"]) == (0, 0, None, {})

    assert await prune_logs(pg.engine, 1_000_015.0) == 2
    assert [row.id for row in await query_logs(pg.engine)] == ["r4", "r3"]
    assert await prune_logs(pg.engine, 0.0) == 0


# --- idempotency -------------------------------------------------------------------------------


async def test_idempotency_claim_finish_replay_mismatch_and_prune(pg):
    store = IdempotencyStore(pg.engine, wait_s=0.2, poll_s=0.02)
    digest = request_hash("/v1/chat/completions", {"model": "m", "n": 1})
    claim = await store.claim(7, "abc", digest)
    assert claim.row_id is not None and claim.replay is None

    with pytest.raises(IdempotencyConflict):  # still pending
        await store.claim(7, "abc", digest)
    with pytest.raises(IdempotencyMismatch):
        await store.claim(7, "abc", request_hash("/v1/chat/completions", {"model": "m", "n": 2}))
    other_key = await store.claim(8, "abc", digest)  # per API key
    assert other_key.row_id not in (None, claim.row_id)

    await claim.finish(200, '{"ok": true}', {"content-type": "application/json", "x-canopy-miner-uid": "3",
                                             "x-other": "dropped"})
    again = await store.claim(7, "abc", digest)
    assert again.row_id is None and again.replay is not None
    assert (again.replay.status, again.replay.body) == (200, '{"ok": true}')
    assert again.replay.headers == {"content-type": "application/json", "x-canopy-miner-uid": "3"}
    response = again.replay.response()
    assert response.headers["x-canopy-idempotent-replay"] == "true" and response.status_code == 200

    other_key.release()  # a failed request frees its key for a retry
    await store.drain()
    assert (await store.claim(8, "abc", digest)).row_id is not None

    async with pg.sessions() as session:
        assert len((await session.scalars(select(IdempotencyRecord))).all()) == 2
    assert await store.prune(before=time.time() + 1) == 2
    assert (await store.claim(7, "abc", digest)).replay is None, "pruned: served afresh"


async def test_two_replicas_claiming_one_idempotency_key_at_once_get_one_winner(pg, replicas):
    stores = [IdempotencyStore(engine, wait_s=5.0, poll_s=0.02) for engine in replicas]
    digest = request_hash("/v1/completions", {"prompt": "x"})
    start = asyncio.Event()

    async def one(i: int):
        await start.wait()
        claim = await stores[i % 2].claim(1, "same", digest)
        if claim.row_id is not None:  # the winner answers while the others wait on its row
            await asyncio.sleep(0.1)
            await claim.finish(201, "answer", {"content-type": "text/plain"})
        return claim

    tasks = [asyncio.create_task(one(i)) for i in range(8)]
    await asyncio.sleep(0.05)
    start.set()
    claims = await asyncio.gather(*tasks)
    winners = [claim for claim in claims if claim.replay is None]
    assert len(winners) == 1
    assert all(claim.replay.status == 201 and claim.replay.body == "answer" for claim in claims if claim.replay)


# --- the gateway, end to end -------------------------------------------------------------------


async def test_a_gateway_request_on_postgres_charges_logs_records_and_replays(pg, gateway):
    """The gateway's miners (tests/api/conftest.py), with the directory, keys, credits, request log,
    idempotency records and organic invocations all on Postgres."""
    hotkeys = gateway.hotkeys
    async with pg.sessions.begin() as session:
        session.add_all(DeviceVerification(miner_hotkey=hotkey, uuid=uuid, ok=True, reason="ok", verified_at=time.time())
                        for hotkey, uuid in ((hotkeys[0], "dev-a"), (hotkeys[1], "dev-b")))
    scores = {hotkeys[0]: 0.5, hotkeys[1]: 0.1, hotkeys[2]: 0.9}
    await pg.save_scores(1, 10, scores, scores, {hotkey: i + 1 for i, hotkey in enumerate(hotkeys)}, time.time())
    await deploy_chutes(pg.engine, [HONEST, BROKEN, FLAKY])  # the directory routes registry chutes only
    dendrite = gateway.upstream.dendrite
    directory = MinerDirectory(gateway.chain, NETUID, dendrite, pg)
    await directory.refresh()
    upstream = Upstream(dendrite, directory, pg, timeout_s=20.0)
    keys = KeyStore(pg.engine)
    app = build_app(keys=keys, limiter=MemoryRateLimiter(), directory=directory, upstream=upstream, store=pg,
                    config=ApiConfig(global_rate_limits=(RateRule(10_000, 60),), request_timeout_s=20.0))
    info, key = await keys.create("pg-client", credits=1)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello postgres"}], "max_tokens": 4, "seed": 1}
    headers = {"authorization": f"Bearer {key}", "idempotency-key": "pg-1"}
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=30) as client:
            first = await client.post("/v1/chat/completions", json=body, headers=headers)
            assert first.status_code == 200, first.text
            assert first.headers["x-canopy-miner-uid"] == "1" and first.json()["choices"][0]["message"]["content"]
            replay = await client.post("/v1/chat/completions", json=body, headers=headers)
            assert replay.status_code == 200 and replay.headers["x-canopy-idempotent-replay"] == "true"
            assert replay.json() == first.json()
            broke = await client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
            assert broke.status_code == 402, broke.text
    finally:
        await app.state.request_log.drain()
        await app.state.idempotency.drain()
        await upstream.drain()

    assert (await keys.get("pg-client")).credits == 0, "charged once: the replay and the refusal cost nothing"
    async with pg.sessions() as session:
        logged = await session.scalar(select(RequestLog).where(RequestLog.id == first.headers["x-request-id"]))
        invocations = (await session.scalars(select(Invocation))).all()
        stored = (await session.scalars(select(IdempotencyRecord))).all()
        charged_key = await session.get(ApiKey, info.id)
    assert (logged.key_id, logged.status, logged.uid, logged.hotkey, logged.charged) == (info.id, 200, 1, hotkeys[0], 1)
    assert [(row.miner_hotkey, row.source, row.ok) for row in invocations] == [(hotkeys[0], "organic", True)]
    assert [(row.key_id, row.idempotency_key, row.status) for row in stored] == [(info.id, "pg-1", 200)]
    assert charged_key.last_used_at is not None
    stats = await log_stats(pg.engine, key_id=info.id)
    assert stats["requests"] >= 2 and stats["charged"] == 1 and stats["by_status"]["402"] == 1


async def test_replicas_starting_at_once_create_the_tables_once(postgres_url):
    stores = await asyncio.gather(*(ValidatorStore.open(postgres_url) for _ in range(3)))
    try:
        await asyncio.gather(*(KeyStore(store.engine).create_tables() for store in stores))
        assert [k.name for k in await KeyStore(stores[0].engine).list()] == []
    finally:
        await asyncio.gather(*(store.close() for store in stores))
