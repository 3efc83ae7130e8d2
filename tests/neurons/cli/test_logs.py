"""``canopy logs`` (filters, table, JSON), ``prune_logs``/``retention_loop`` and the ``--api.log_retention_days`` flag."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from typer.testing import CliRunner

from api.keys import KeyStore
from api.requestlog import parse_since, prune_logs, retention_loop
from store.api_tables import RequestLog
from canopy.cli.main import app
from node.config import ConfigError, load_settings
from neurons.api import gateway_config
from store.queries import ValidatorStore
from tests.support.store import sqlite_url

runner = CliRunner()


async def _seed(url: str, now: float) -> None:
    store = await ValidatorStore.open(url)
    try:
        keys = KeyStore(store.engine)
        await keys.create_tables()
        alice, _ = await keys.create("alice")
        bob, _ = await keys.create("bob")
        rows = [("req_old", alice.id, 200, now - 3 * 86400), ("req_a1", alice.id, 200, now - 600),
                ("req_a2", alice.id, 429, now - 300), ("req_b1", bob.id, 200, now - 200),
                ("req_a3", alice.id, 200, now - 100)]
        async with keys.sessions.begin() as session:
            for request_id, key_id, status, created in rows:
                session.add(RequestLog(id=request_id, key_id=key_id, route="/v1/chat/completions", model="fake-model",
                                       strategy="default", miners_tried="[1, 2]", uid=2, hotkey="hk", status=status,
                                       error="" if status == 200 else "rate_limit_exceeded", latency_ms=12.5,
                                       prompt_tokens=3, completion_tokens=5, charged=int(status == 200),
                                       created_at=created))
    finally:
        await store.close()


@pytest.fixture()
def now() -> float:
    """The moment the rows are seeded: the suite runs for minutes, so a module-level clock would age them."""
    return time.time()


@pytest.fixture()
def url(tmp_path, now):
    url = sqlite_url(tmp_path / "api.sqlite")
    asyncio.run(_seed(url, now))
    return url


def logs(url: str, *args: str):
    return runner.invoke(app, ["logs", *args, "--database-url", url], env={"COLUMNS": "250"})


def ids(result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [json.loads(line)["id"] for line in result.output.splitlines() if line.strip()]


def test_the_table_shows_rows_newest_first(url):
    shown = logs(url)
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert "API requests (5 shown" in out and "alice" in out and "bob" in out and "rate_limit_exceeded" in out
    assert out.index("req_a3") < out.index("req_b1") < out.index("req_a2") < out.index("req_a1") < out.index("req_old")


def test_filters_key_status_since_limit(url, now):
    assert ids(logs(url, "--json")) == ["req_a3", "req_b1", "req_a2", "req_a1", "req_old"]
    assert ids(logs(url, "--json", "--key", "alice")) == ["req_a3", "req_a2", "req_a1", "req_old"]
    assert ids(logs(url, "--json", "--key", "alice", "--status", "200", "--since", "1h")) == ["req_a3", "req_a1"]
    assert ids(logs(url, "--json", "--since", "250s", "--limit", "1")) == ["req_a3"]
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 400))
    assert ids(logs(url, "--json", "--since", iso)) == ["req_a3", "req_b1", "req_a2"]
    row = json.loads(logs(url, "--json", "--limit", "1").output)
    assert row["key"] == "alice" and row["miners_tried"] == [1, 2] and row["completion_tokens"] == 5


def test_bad_filters_are_refused(url):
    unknown = logs(url, "--key", "carol")
    assert unknown.exit_code == 1 and "no key named 'carol'" in unknown.output
    since = logs(url, "--since", "yesterday")
    assert since.exit_code == 1 and "not a duration" in since.output
    assert logs(url, "--status", "42").exit_code == 2
    assert logs(url, "--limit", "0").exit_code == 2


def test_prune_and_the_retention_loop(url, now):
    async def go() -> int:
        store = await ValidatorStore.open(url)
        try:
            removed = await prune_logs(store.engine, now - 86400)
            async with KeyStore(store.engine).sessions.begin() as session:  # one more old row for the loop
                session.add(RequestLog(id="req_older", route="/v1/models", status=200, created_at=now - 40 * 86400))
            loop = asyncio.create_task(retention_loop(store.engine, 30, interval_s=0.01))
            await asyncio.sleep(0.2)
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
            return removed
        finally:
            await store.close()

    assert asyncio.run(go()) == 1
    assert ids(logs(url, "--json")) == ["req_a3", "req_b1", "req_a2", "req_a1"]


def test_since_parsing_and_the_retention_flag():
    assert parse_since("1h", now=10_000) == 10_000 - 3600
    assert parse_since("2d", now=200_000) == 200_000 - 172_800
    assert parse_since("2027-01-01") == parse_since("2027-01-01T00:00:00Z")
    with pytest.raises(ValueError):
        parse_since("soon")
    assert load_settings([]).api.log_retention_days == 30
    settings = load_settings(["--api.log_retention_days", "7", "--api.idempotency_ttl_s", "60"])
    assert settings.api.log_retention_days == 7 and gateway_config(settings.api).idempotency_ttl_s == 60
    with pytest.raises(ConfigError):
        load_settings(["--api.log_retention_days", "-1"])
