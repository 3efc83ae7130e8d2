"""Fixtures of the validator tests: a real SQLite store (``tmp_path / "validator.sqlite"``), captured log lines."""

from __future__ import annotations

import pytest
from loguru import logger

from store.queries import ValidatorStore
from tests.support.store import sqlite_url


@pytest.fixture
async def store(tmp_path):
    opened = await ValidatorStore.open(sqlite_url(tmp_path / "validator.sqlite"))
    yield opened
    await opened.close()


@pytest.fixture
def logs():
    """The loguru messages logged during the test (INFO and up), as plain strings."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(message.record["message"]), level="INFO")
    yield lines
    logger.remove(sink)
