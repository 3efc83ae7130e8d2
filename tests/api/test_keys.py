"""API keys and credits on a real SQLite file: shown once, stored hashed, atomic credits."""

from __future__ import annotations

import hashlib
import json

import pytest
from sqlalchemy import select, update

from api.keys import KeyError_, KeyRejected, KeyStore, RateRule, parse_expiry, parse_strategy
from store.api_tables import ApiKey
from store.queries import ValidatorStore


@pytest.fixture
async def keys(tmp_path):
    store = await ValidatorStore.open(f"sqlite+aiosqlite:///{tmp_path / 'api.sqlite'}")
    key_store = KeyStore(store.engine)
    await key_store.create_tables()
    yield key_store
    await store.close()


async def test_a_key_is_shown_once_and_stored_as_its_hash(keys):
    info, key = await keys.create("alice", credits=5, rate_limits=["10/60s", "100/1h"], default_strategy="top_n:3",
                                  models=["m1"])
    assert key.startswith("cnp_") and len(key) > 40 and info.hint == f"cnp_…{key[-4:]}"
    async with keys.sessions() as session:
        row = (await session.scalars(select(ApiKey))).one()
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest() and key not in repr(row.__dict__)
    listed = await keys.list()
    assert [k.name for k in listed] == ["alice"] and key not in repr(listed)
    assert listed[0].rate_limits == (RateRule(10, 60), RateRule(100, 3600)) and listed[0].models == ("m1",)
    assert (await keys.authenticate(key)).name == "alice"
    with pytest.raises(KeyError_, match="exists already"):
        await keys.create("alice")


@pytest.mark.parametrize("name", ["", "a/b", "x" * 65, "-lead"])
async def test_bad_names_and_fields_are_refused(keys, name):
    with pytest.raises(KeyError_):
        await keys.create(name)


async def test_bad_fields_name_the_fix(keys):
    with pytest.raises(KeyError_, match="N/Ws"):
        await keys.create("a", rate_limits=["ten per minute"])
    with pytest.raises(KeyError_, match="top_n:N"):
        await keys.create("b", default_strategy="fastest")
    with pytest.raises(KeyError_, match=">= 0"):
        await keys.create("c", credits=-1)
    assert await keys.list() == []  # nothing half-written


async def test_authentication_refuses_missing_unknown_disabled_and_expired_keys(keys):
    _, key = await keys.create("k")
    for given, reason in ((None, "missing"), ("", "missing"), ("cnp_nope", "unknown")):
        with pytest.raises(KeyRejected) as refused:
            await keys.authenticate(given)
        assert refused.value.reason == reason
    await keys.edit("k", disabled=True)
    with pytest.raises(KeyRejected, match="disabled"):
        await keys.authenticate(key)
    await keys.edit("k", disabled=False, expires_at=100.0)
    with pytest.raises(KeyRejected, match="expired"):
        await keys.authenticate(key, now=101.0)
    assert (await keys.authenticate(key, now=99.0)).name == "k"
    await keys.delete("k")
    with pytest.raises(KeyRejected, match="not valid"):
        await keys.authenticate(key)


def test_parsers():
    assert RateRule.parse("10/60s") == RateRule(10, 60) and RateRule.parse("5/m") == RateRule(5, 60)
    assert RateRule.parse("100/1h") == RateRule(100, 3600) and str(RateRule(10, 60)) == "10/60s"
    assert parse_expiry("in 30 days", now=0) == 30 * 86400 and parse_expiry("in 2 hours", now=10) == 7210
    assert parse_expiry("1970-01-02") == 86400 and parse_expiry("1970-01-01T00:01:00Z") == 60
    with pytest.raises(KeyError_, match="ISO date"):
        parse_expiry("next tuesday")
    assert parse_strategy("uids:1,2,3") == "uids:1,2,3" and parse_strategy("default") == "default"
    for bad in ("top_n:0", "uids:", "top_n:-1"):
        with pytest.raises(KeyError_):
            parse_strategy(bad)


async def test_the_key_cache_saves_reads_and_edits_through_it_apply_at_once(keys):
    cached = KeyStore(keys.engine, cache_s=60.0)
    info, key = await cached.create("cached")
    assert (await cached.authenticate(key)).name == "cached"
    await keys.edit("cached", disabled=True)  # another process (the CLI): seen within cache_s
    assert (await cached.authenticate(key)).name == "cached"
    await cached.edit("cached", disabled=True)  # through this store: at once
    with pytest.raises(KeyRejected, match="disabled"):
        await cached.authenticate(key)


async def test_batch_writer_writes_everything_queued_in_few_transactions():
    from api.batch import BatchWriter

    batches: list[list[int]] = []

    async def flush(rows: list[int]) -> None:
        batches.append(rows)
        if rows == [13]:
            raise RuntimeError("disk full")  # logged, the writer goes on

    writer = BatchWriter(flush, what="numbers", max_delay_s=0.01, max_batch=5)
    for n in range(13):
        writer.add(n)
    await writer.drain()
    writer.add(13)
    await writer.drain()
    writer.add(14)
    await writer.drain()
    assert [n for batch in batches for n in batch] == list(range(15)) and len(batches) == 5


async def test_owner_scopes_and_chutes_are_stored_listed_and_authenticated(keys):
    info, key = await keys.create("dep", owner="alice", scopes=["deploy", "invoke"], chutes=["alice/llm", "bob/x"])
    assert info.owner == "alice" and info.scopes == {"invoke", "deploy"} and info.chutes == {"alice/llm", "bob/x"}
    assert info.admin is False
    seen = await keys.authenticate(key)
    assert (seen.owner, seen.scopes, seen.chutes) == ("alice", frozenset({"invoke", "deploy"}),
                                                       frozenset({"alice/llm", "bob/x"}))
    listed = (await keys.list())[0].as_dict()
    assert listed["owner"] == "alice" and listed["scopes"] == ["invoke", "deploy"]
    assert listed["chutes"] == ["alice/llm", "bob/x"]
    edited = await keys.edit("dep", owner="carol", scopes=["invoke"], chutes=[])  # []: every chute
    assert (edited.owner, edited.scopes, edited.chutes) == ("carol", frozenset({"invoke"}), None)
    cleared = await keys.edit("dep", unset=frozenset({"owner"}))
    assert cleared.owner is None and cleared.scopes == {"invoke"}
    plain, _ = await keys.create("plain")
    assert plain.owner is None and plain.scopes == {"invoke"} and plain.chutes is None


async def test_the_admin_flag_and_the_admin_scope_stay_together(keys):
    made, key = await keys.create("root", admin=True)
    assert made.admin and made.scopes == {"invoke", "admin"}
    async with keys.sessions() as session:
        row = (await session.scalars(select(ApiKey).where(ApiKey.name == "root"))).one()
    assert row.admin is True and json.loads(row.scopes) == ["invoke", "admin"]
    by_scope, _ = await keys.create("root2", scopes=["admin"])
    assert by_scope.admin and by_scope.scopes == {"admin"}
    demoted = await keys.edit("root", admin=False)
    assert not demoted.admin and demoted.scopes == {"invoke"}
    promoted = await keys.edit("root", scopes=["invoke", "deploy", "admin"])
    assert promoted.admin and (await keys.authenticate(key)).admin
    narrowed = await keys.edit("root", scopes=["invoke"])
    assert not narrowed.admin
    with pytest.raises(KeyError_, match="contradicts"):
        await keys.create("odd", scopes=["admin"], admin=False)


async def test_an_old_key_with_only_the_admin_flag_keeps_admin(keys):
    _, key = await keys.create("old")
    async with keys.sessions.begin() as session:  # as migration 0005 leaves it, or a previous-version replica
        await session.execute(update(ApiKey).where(ApiKey.name == "old").values(admin=True, scopes='["invoke"]'))
    seen = await keys.authenticate(key)
    assert seen.admin and seen.scopes == {"invoke", "admin"} and seen.owner is None and seen.chutes is None


@pytest.mark.parametrize("fields, message", [
    ({"scopes": ["invoke", "root"]}, "unknown scope"), ({"scopes": ["deploy"], "owner": "bad owner"}, "owner"),
    ({"owner": "-x"}, "owner"), ({"owner": "a" * 65}, "owner"), ({"chutes": ["nochute"]}, "owner/name"),
    ({"chutes": ["alice/"]}, "owner/name"), ({"chutes": ["a b/c"]}, "owner/name")])
async def test_bad_owner_scopes_and_chutes_are_refused_with_nothing_stored(keys, fields, message):
    with pytest.raises(KeyError_, match=message):
        await keys.create("bad", **fields)
    assert await keys.list() == []
    await keys.create("good", owner="alice")
    with pytest.raises(KeyError_, match=message):
        await keys.edit("good", **fields)
    after = await keys.get("good")
    assert (after.owner, after.scopes, after.chutes) == ("alice", frozenset({"invoke"}), None)
