"""Store migrations (store/schema.py, store/migrations): a new version keeps the existing
keys, logs and scores, on SQLite files and on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from api.keys import KeyStore, hash_key, hint_of
from store.schema import current_revision, metadata, upgrade
from store.queries import ValidatorStore
from store.registry import ChuteRegistry
from store.scopes import key_scopes, may
from store.tables import DeviceVerification, Invocation
from tests.support import ROOT
from tests.support.postgres_server import needs_postgres
from tests.support.store import sqlite_url

HEAD = "0006"


def _differences(connection: sa.Connection) -> list:
    return compare_metadata(MigrationContext.configure(connection), metadata())


async def _seed(engine) -> None:
    """What a running subnet has at revision 0001: a key, a request log row, a score, a verification."""
    async with engine.begin() as connection:
        await connection.execute(sa.text(
            "INSERT INTO api_keys (name, key_hash, hint, credits, disabled, admin, rate_limits, created_at) "
            "VALUES ('alice', :hash, 'cnp_…abcd', 40, false, false, '[]', :now)"), {"hash": "a" * 64, "now": time.time()})
        await connection.execute(sa.text(
            "INSERT INTO api_request_logs (id, key_id, route, model, strategy, miners_tried, hotkey, status, error, "
            "latency_ms, prompt_tokens, completion_tokens, charged, created_at) VALUES ('req-1', 1, '/v1/chat/completions', "
            "'m', 'default', '[1]', 'h', 200, '', 3.5, 5, 7, 1, :now)"), {"now": time.time()})
    await ValidatorStore(engine).save_scores(3, 120, {"hk1": 0.75}, {"hk1": 0.8}, {"hk1": 1}, time.time())


async def _check_kept(engine) -> None:
    keys = KeyStore(engine)
    alice = await keys.get("alice")
    assert alice.credits == 40 and alice.hint == "cnp_…abcd"
    async with engine.connect() as connection:
        logged = (await connection.execute(sa.text("SELECT prompt_tokens, completion_tokens FROM api_request_logs"))).all()
        assert [tuple(row) for row in logged] == [(5, 7)]
        assert await connection.run_sync(current_revision) == HEAD
        assert await connection.run_sync(_differences) == [], "the newest revision is exactly the tables"
    scores, step = await ValidatorStore(engine).load_scores()
    assert scores == {"hk1": pytest.approx(0.75)} and step == 3


async def _upgrade_keeps_everything(url: str) -> None:
    engine = create_async_engine(url)
    try:
        await upgrade(engine, "0001")
        await _seed(engine)
        async with engine.begin() as connection:  # an invocation scored before 0003
            await connection.execute(sa.text(
                "INSERT INTO invocations (miner_hotkey, chute_id, source, ok, error, detail, key, compute_s, "
                "prompt_tokens, completion_tokens, latency_s, flagged, created_at) VALUES ('hk1', 'c', 'organic', "
                "true, '', '', '', 2.5, 0, 0, 3.0, false, :now)"), {"now": time.time()})
        store = await ValidatorStore.open(url)  # a new version starting on the old database
        await store.close()
        await _check_kept(engine)
        async with engine.begin() as connection:  # what 0002 changed is usable
            await connection.execute(sa.text(
                "INSERT INTO api_credit_leases (key_id, replica, credits, updated_at) VALUES (1, 'r', 3, 0)"))
            await connection.execute(sa.insert(DeviceVerification).values(
                miner_hotkey="hk1", uuid="GPU-1", ok=True, reason="ok", memory_bytes=80 * 2**30, verified_at=0.0))
            memory = (await connection.execute(sa.select(DeviceVerification.memory_bytes))).scalar_one()
            assert memory == 80 * 2**30, "64-bit after 0002"
            # 0003: the old row is unsteered (still scored); a row left without the column (an API
            # replica of the previous version) is too, and a steered one is not scored
            await connection.execute(sa.text(
                "INSERT INTO invocations (miner_hotkey, chute_id, source, ok, error, detail, key, compute_s, "
                "prompt_tokens, completion_tokens, latency_s, flagged, created_at) VALUES ('hk1', 'c', 'organic', "
                "true, '', '', '', 1.5, 0, 0, 2.0, false, :now)"), {"now": time.time()})
            await connection.execute(sa.insert(Invocation).values(
                miner_hotkey="hk1", chute_id="c", source="organic", ok=True, compute_s=100.0, steered=True,
                created_at=time.time()))
            steered = (await connection.execute(sa.select(Invocation.steered).order_by(Invocation.id))).scalars().all()
            assert steered == [False, False, True]
        activity = await ValidatorStore(engine).activity_since(0.0)
        assert (activity["hk1"].compute_seconds, activity["hk1"].invocations_ok) == (pytest.approx(4.0), 2)
    finally:
        await engine.dispose()


async def test_a_new_version_keeps_keys_logs_and_scores_on_sqlite(tmp_path):
    await _upgrade_keeps_everything(sqlite_url(tmp_path / "old.sqlite"))


@needs_postgres[0]
@needs_postgres[1]
async def test_a_new_version_keeps_keys_logs_and_scores_on_postgres(postgres_url):  # noqa: F811
    await _upgrade_keeps_everything(postgres_url)


def _legacy(*prefixes: str) -> sa.MetaData:
    """What ``create_all`` made before migrations: the tables whose names start with ``prefixes``."""
    legacy = sa.MetaData()
    for table in metadata().tables.values():
        if table.name.startswith(prefixes) and table.name != "api_credit_leases":
            table.to_metadata(legacy)
    return legacy


VALIDATOR_TABLES = ("miners", "device_", "invocations", "score", "weight_")


@pytest.mark.parametrize("opener", ["validator", "api"])
async def test_a_validator_only_database_gains_the_api_tables_and_keeps_its_scores(tmp_path, opener):
    url = sqlite_url(tmp_path / "legacy.sqlite")
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:  # the validator ran alone before migrations existed
            await connection.run_sync(_legacy(*VALIDATOR_TABLES).create_all)
        await ValidatorStore(engine).save_scores(3, 120, {"hk1": 0.75}, {"hk1": 0.8}, {"hk1": 1}, time.time())
        if opener == "validator":
            await (await ValidatorStore.open(url)).close()
        else:
            await KeyStore(engine).create_tables()  # the API (or canopy keys) opening it first
        info, _ = await KeyStore(engine).create("after", credits=5)
        assert info.credits == 5
        assert await ValidatorStore(engine).load_scores() == ({"hk1": pytest.approx(0.75)}, 3)
        async with engine.connect() as connection:
            assert await connection.run_sync(current_revision) == HEAD
            assert await connection.run_sync(_differences) == []
    finally:
        await engine.dispose()


async def test_a_database_with_both_tables_made_before_migrations_keeps_everything(tmp_path):
    url = sqlite_url(tmp_path / "legacy.sqlite")
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_legacy(*VALIDATOR_TABLES, "api_").create_all)
        await _seed(engine)
        await KeyStore(engine).create_tables()
        await _check_kept(engine)
    finally:
        await engine.dispose()


async def test_a_fresh_database_is_created_at_the_newest_revision(tmp_path):
    store = await ValidatorStore.open(sqlite_url(tmp_path / "new.sqlite"))
    try:
        async with store.engine.connect() as connection:
            assert await connection.run_sync(current_revision) == HEAD
            assert await connection.run_sync(_differences) == []
    finally:
        await store.close()


_OPENER = """
import asyncio, os, sys, time
from store.queries import ValidatorStore

async def main():
    while not os.path.exists(sys.argv[2]):  # every process imported; now they open at once
        await asyncio.sleep(0.005)
    store = await ValidatorStore.open(sys.argv[1])
    await store.close()

asyncio.run(main())
"""


async def _processes_open_at_once(url: str, go: Path, n: int = 4) -> None:
    children = [subprocess.Popen([sys.executable, "-c", _OPENER, url, str(go)], cwd=ROOT, stderr=subprocess.PIPE,
                                 text=True) for _ in range(n)]
    try:
        await asyncio.sleep(3.0)  # the imports (~1-2 s each on two cores)
        go.touch()
        for child in children:
            _, errors = child.communicate(timeout=120)
            assert child.returncode == 0, errors[-3000:]
    finally:
        for child in children:
            child.kill()
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(current_revision) == HEAD
            versions = (await connection.execute(sa.text("SELECT version_num FROM alembic_version"))).all()
            assert [tuple(row) for row in versions] == [(HEAD,)]
            assert await connection.run_sync(_differences) == []
    finally:
        await engine.dispose()


@pytest.mark.slow
async def test_processes_opening_one_new_sqlite_file_at_once_all_find_it_at_head(tmp_path):
    """A validator and a reader (the API, ``canopy logs``) starting together on a fresh file."""
    for round_ in range(2):
        await _processes_open_at_once(sqlite_url(tmp_path / f"race{round_}.sqlite"),
                                      tmp_path / f"go{round_}")


@pytest.mark.slow
@needs_postgres[0]
@needs_postgres[1]
async def test_processes_opening_one_new_postgres_database_at_once_all_find_it_at_head(postgres_url, tmp_path):  # noqa: F811
    await _processes_open_at_once(postgres_url, tmp_path / "go")


async def _owners_from_the_verifications_kept(url: str) -> None:
    """0004: each uuid belongs to the hotkey of its oldest passing verification still stored."""
    engine = create_async_engine(url)
    try:
        await upgrade(engine, "0003")
        async with engine.begin() as connection:  # before 0004 a thief's claim could follow the victim's
            for hotkey, uuid, ok, at in (("victim", "GPU-v", True, 1.0), ("thief", "GPU-v", True, 2.0),
                                         ("thief", "GPU-t", False, 3.0), ("thief", "GPU-t", True, 4.0),
                                         ("nobody", "GPU-n", False, 5.0)):
                await connection.execute(sa.text(
                    "INSERT INTO device_verifications (miner_hotkey, uuid, ok, reason, detail, model_id, name, "
                    "memory_bytes, elapsed_s, expected_s, throughput_macs_s, samples, verify_cpu_s, verified_at) "
                    "VALUES (:hotkey, :uuid, :ok, :reason, '', '', '', 0, 0, 0, 0, 0, 0, :at)"),
                    dict(hotkey=hotkey, uuid=uuid, ok=ok, reason="ok" if ok else "too_slow", at=at))
        await upgrade(engine)
        store = ValidatorStore(engine)
        owners = await store.device_owners()
        assert {uuid: (owner.hotkey, owner.since, owner.pinned) for uuid, owner in owners.items()} == {
            "GPU-v": ("victim", 1.0, False), "GPU-t": ("thief", 4.0, False)}
        latest = await store.latest_verifications()
        assert set(latest) == {("victim", "GPU-v"), ("thief", "GPU-v"), ("thief", "GPU-t"), ("nobody", "GPU-n")}
        assert latest[("victim", "GPU-v")].proven_bytes == 0  # older rows: scoring falls back to memory_bytes
        async with engine.connect() as connection:
            assert await connection.run_sync(current_revision) == HEAD
            assert await connection.run_sync(_differences) == []
    finally:
        await engine.dispose()


async def test_0004_gives_each_verified_uuid_to_its_first_passing_hotkey_on_sqlite(tmp_path):
    await _owners_from_the_verifications_kept(sqlite_url(tmp_path / "owners.sqlite"))


@needs_postgres[0]
@needs_postgres[1]
async def test_0004_gives_each_verified_uuid_to_its_first_passing_hotkey_on_postgres(postgres_url):  # noqa: F811
    await _owners_from_the_verifications_kept(postgres_url)


async def _keys_keep_their_rights_through_0005(url: str) -> None:
    """0005 on a database at 0004 with keys: they authenticate as before, an admin key stays
    admin, none owns a chute, and the registry's tables are there and usable."""
    engine = create_async_engine(url)
    try:
        await upgrade(engine, "0004")
        raw = {"alice": "cnp_" + "a" * 43, "root": "cnp_" + "r" * 43}
        async with engine.begin() as connection:
            for name, admin in (("alice", False), ("root", True)):
                await connection.execute(sa.text(
                    "INSERT INTO api_keys (name, key_hash, hint, credits, disabled, admin, rate_limits, models, "
                    "created_at) VALUES (:name, :hash, :hint, 40, false, :admin, '[\"5/60s\"]', '[\"m\"]', 1.0)"),
                    dict(name=name, hash=hash_key(raw[name]), hint=hint_of(raw[name]), admin=admin))
        old_columns = sa.text("SELECT id, name, key_hash, hint, credits, expires_at, disabled, admin, rate_limits, "
                              "default_strategy, models, created_at, last_used_at FROM api_keys ORDER BY id")
        async with engine.connect() as connection:
            before = [tuple(row) for row in (await connection.execute(old_columns)).all()]
        await upgrade(engine)
        async with engine.connect() as connection:
            assert [tuple(row) for row in (await connection.execute(old_columns)).all()] == before
        keys = KeyStore(engine)
        after = {name: await keys.authenticate(key) for name, key in raw.items()}
        assert {name: (info.admin, info.credits, [str(rule) for rule in info.rate_limits], info.models)
                for name, info in after.items()} == {"alice": (False, 40, ["5/60s"], ("m",)),
                                                     "root": (True, 40, ["5/60s"], ("m",))}
        async with engine.begin() as connection:
            rows = (await connection.execute(sa.text(
                "SELECT name, owner, scopes, chutes, admin FROM api_keys ORDER BY name"))).all()
            assert [tuple(row[:4]) for row in rows] == [("alice", None, '["invoke"]', None),
                                                        ("root", None, '["invoke", "admin"]', None)]
            rights = {row[0]: key_scopes(row[2], row[4]) for row in rows}
            assert rights == {"alice": {"invoke"}, "root": {"invoke", "admin"}}
            assert may(rights["alice"], None, None, "invoke", "bob", "echo", chute_public=True)
            assert not may(rights["alice"], None, None, "deploy", "alice", "echo")
            assert may(rights["root"], None, None, "admin")
            # a key made by a replica of the previous version (no scopes column) gets the default
            await connection.execute(sa.text(
                "INSERT INTO api_keys (name, key_hash, hint, disabled, admin, rate_limits, created_at) "
                "VALUES ('old', :hash, 'cnp_…oldk', false, true, '[]', 2.0)"), {"hash": "o" * 64})
            row = (await connection.execute(sa.text("SELECT scopes, admin FROM api_keys WHERE name = 'old'"))).one()
            assert key_scopes(row[0], row[1]) == {"invoke", "admin"}
            assert await connection.run_sync(current_revision) == HEAD
            assert await connection.run_sync(_differences) == []
        registry = ChuteRegistry(engine)
        code = b"bundle"
        revision = hashlib.sha256(code).hexdigest()
        record = await registry.put_revision("alice", "echo", revision, code, {"cords": []}, public=False,
                                             max_instances=1, shutdown_after_seconds=60)
        assert await registry.current_revisions() == {record.chute_id: revision}
        assert await registry.bundle(revision) == code
    finally:
        await engine.dispose()


async def test_0005_keeps_existing_keys_and_their_rights_on_sqlite(tmp_path):
    await _keys_keep_their_rights_through_0005(sqlite_url(tmp_path / "keys.sqlite"))


@needs_postgres[0]
@needs_postgres[1]
async def test_0005_keeps_existing_keys_and_their_rights_on_postgres(postgres_url):  # noqa: F811
    await _keys_keep_their_rights_through_0005(postgres_url)
