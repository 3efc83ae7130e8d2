"""Credit leases (api/credits.py) on a real SQLite file: exact counts, no credit made or lost."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select, update

from api.credits import CreditLedger
from api.keys import KeyStore
from store.api_tables import ApiKey, CreditLease
from store.queries import ValidatorStore


@pytest.fixture
async def engine(tmp_path):
    store = await ValidatorStore.open(f"sqlite+aiosqlite:///{tmp_path / 'api.sqlite'}")
    await KeyStore(store.engine).create_tables()
    yield store.engine
    await store.close()


@pytest.fixture
async def keys(engine):
    return KeyStore(engine)


async def _column(keys: KeyStore, key_id: int) -> int | None:
    async with keys.sessions() as session:
        return (await session.execute(select(ApiKey.credits).where(ApiKey.id == key_id))).scalar_one()


async def _lease_rows(keys: KeyStore) -> list[tuple[str, int]]:
    async with keys.sessions() as session:
        return [tuple(row) for row in (await session.execute(select(CreditLease.replica, CreditLease.credits))).all()]


@pytest.mark.parametrize("credits", [1, 7, 100, 1000])
async def test_m_credits_serve_exactly_m_of_n_concurrent_requests(keys, credits):
    info, _ = await keys.create("k", credits=credits)
    ledger = CreditLedger(keys)
    taken = await asyncio.gather(*(ledger.reserve(info) for _ in range(credits + 25)))
    assert sum(taken) == credits
    assert (await keys.get("k")).credits == 0 and await _column(keys, info.id) == 0
    await ledger.close()
    assert await _column(keys, info.id) == 0 and await _lease_rows(keys) == []


async def test_a_lease_is_a_share_of_the_balance_and_reads_stay_exact(keys):
    info, _ = await keys.create("k", credits=1000)
    ledger = CreditLedger(keys, lease_max=64, lease_share=8)
    assert await ledger.reserve(info)
    assert await _column(keys, info.id) == 1000 - 64, "one write took a lease of 64"
    assert await _lease_rows(keys) == [(ledger.replica, 64)]
    for _ in range(9):
        assert await ledger.reserve(info)
    assert await _column(keys, info.id) == 936, "the next reservations were served from memory"
    assert (await keys.get("k")).credits == 990, "this process reads its own unwritten spending"
    ledger.refund(info.id)
    assert (await keys.get("k")).credits == 991
    await ledger.sync()
    assert await _lease_rows(keys) == [(ledger.replica, 55)]
    assert (await KeyStore(keys.engine).get("k")).credits == 991, "another process sees it after a heartbeat"
    await ledger.close()
    assert await _column(keys, info.id) == 991 and await _lease_rows(keys) == []


async def test_an_idle_lease_goes_back_and_a_busy_one_stays(keys):
    info, _ = await keys.create("k", credits=80)
    ledger = CreditLedger(keys, idle_s=2.0)
    assert await ledger.reserve(info)
    await ledger.sync(now=time.monotonic())
    assert await _column(keys, info.id) == 70 and await _lease_rows(keys) == [(ledger.replica, 9)]
    await ledger.sync(now=time.monotonic() + 5)
    assert await _column(keys, info.id) == 79 and await _lease_rows(keys) == []
    assert await ledger.reserve(info), "a new request takes a new lease"
    assert await _column(keys, info.id) == 79 - 9
    await ledger.close()


async def test_two_replicas_never_make_or_lose_credits(keys):
    info, _ = await keys.create("k", credits=300)
    first, second = CreditLedger(keys, replica="a"), CreditLedger(keys, replica="b")
    served = await asyncio.gather(*(replica.reserve(info) for _ in range(250) for replica in (first, second)))
    assert sum(served) == 300, "the replicas served every credit between them"
    assert not await first.reserve(info) and not await second.reserve(info)
    for _ in range(5):
        first.refund(info.id)
    assert await second.reserve(info) is False, "credits refunded to a's lease are a's to serve"
    assert sum([await first.reserve(info) for _ in range(6)]) == 5
    first.refund(info.id)
    await first.close()
    await second.close()
    assert await _column(keys, info.id) == 1 and await _lease_rows(keys) == []


async def test_a_dead_replicas_lease_is_reclaimed_once(keys):
    info, _ = await keys.create("k", credits=100)
    dead = CreditLedger(keys, replica="dead", stale_s=60, idle_s=3600)
    for _ in range(3):
        assert await dead.reserve(info)
    await dead.sync()  # its last heartbeat: 12 leased, 3 spent
    for _ in range(2):
        assert await dead.reserve(info)  # spent after the heartbeat: given back below, the client's gain
    async with keys.sessions.begin() as session:
        await session.execute(update(CreditLease).values(updated_at=time.time() - 120))
    survivors = [CreditLedger(keys, replica="b", stale_s=60), CreditLedger(keys, replica="c", stale_s=60)]
    reclaimed = await asyncio.gather(*(survivor.reclaim_stale() for survivor in survivors))
    assert sorted(reclaimed) == [0, 1], "exactly one replica gives the lease back"
    assert await _column(keys, info.id) == 97 and await _lease_rows(keys) == []
    await dead.sync()  # the "dead" one was only paused: its row is gone, so it drops the lease
    assert await dead.reserve(info) and await _column(keys, info.id) == 97 - 12


async def test_editing_credits_sets_the_whole_balance_and_unlimited_keys_pass(keys):
    info, _ = await keys.create("k", credits=800)
    ledger = CreditLedger(keys)
    assert await ledger.reserve(info)
    assert (await keys.edit("k", credits=500)).credits == 500
    assert (await keys.get("k")).credits == 500
    await ledger.close()
    assert await _column(keys, info.id) == 500
    unlimited = await keys.edit("k", unset=frozenset({"credits"}))
    assert all(await asyncio.gather(*(ledger.reserve(unlimited) for _ in range(50))))
    assert await _lease_rows(keys) == []
    stale_view = info  # authenticated as limited, made unlimited since: the lease request sees it
    assert await ledger.reserve(stale_view) and await _lease_rows(keys) == []
    await ledger.close()


async def test_a_refund_after_the_lease_went_back_reaches_the_balance(keys):
    info, _ = await keys.create("k", credits=16)
    ledger = CreditLedger(keys)
    assert await ledger.reserve(info)
    await ledger.sync(now=time.monotonic() + 60)  # idle: the lease (1 of 2 left) goes back
    assert await _column(keys, info.id) == 15
    ledger.refund(info.id)
    await ledger.close()
    assert await _column(keys, info.id) == 16


async def test_deleting_a_key_drops_its_leases(keys):
    info, _ = await keys.create("k", credits=100)
    ledger = CreditLedger(keys)
    assert await ledger.reserve(info)
    await keys.delete("k")
    assert await _lease_rows(keys) == []
    await ledger.close()  # giving back a lease of a deleted key is a no-op, not an error
