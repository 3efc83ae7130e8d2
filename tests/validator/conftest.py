"""Shared fixtures of the validator tests: a real SQLite store on a tmp file, captured log lines."""

from __future__ import annotations

import pytest
from loguru import logger

from validator.store import ValidatorStore


def sqlite_url(path) -> str:
    return f"sqlite+aiosqlite:///{path}"


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
