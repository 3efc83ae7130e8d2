"""Fixtures of the validator tests: a real SQLite store (``tmp_path / "validator.sqlite"``), captured log lines."""

from __future__ import annotations

import pytest

from store.queries import ValidatorStore
from tests.support.logs import captured_logs
from tests.support.store import sqlite_url


@pytest.fixture
async def store(tmp_path):
    opened = await ValidatorStore.open(sqlite_url(tmp_path / "validator.sqlite"))
    yield opened
    await opened.close()


@pytest.fixture
def logs():
    """The loguru messages logged during the test (INFO and up), as plain strings."""
    with captured_logs("INFO") as lines:
        yield lines
