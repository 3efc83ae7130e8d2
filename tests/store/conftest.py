"""Fixtures of the store tests: every test that asks for ``store_url`` (or ``store``) runs
twice, on a SQLite file and on a fresh database of a real PostgreSQL server."""

from __future__ import annotations

import pytest

from store.queries import ValidatorStore
from tests.support.postgres_server import needs_postgres
from tests.support.store import sqlite_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=needs_postgres)])
def store_url(request, tmp_path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return sqlite_url(tmp_path / "validator.sqlite")


@pytest.fixture
async def store(store_url):
    opened = await ValidatorStore.open(store_url)
    assert opened.engine.dialect.name == store_url.split("+")[0]
    yield opened
    await opened.close()
