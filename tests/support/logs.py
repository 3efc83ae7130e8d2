"""Captured loguru messages in tests: ``with captured_logs("INFO") as lines: ...``."""

from __future__ import annotations

import contextlib
from typing import Iterator

from loguru import logger


@contextlib.contextmanager
def captured_logs(level: str) -> Iterator[list[str]]:
    """The messages logged at ``level`` and up while the block runs, as plain strings."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(message.record["message"]), level=level)
    try:
        yield lines
    finally:
        logger.remove(sink)
