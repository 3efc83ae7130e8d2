"""Shared test helpers: the only test code that test modules import.

Each module is named for what it holds (a fake, a server fixture, the helpers of one kind
of process); test modules and conftests import from ``tests.support`` and never from a test
module or a conftest. Fixtures stay in conftests (and the server fixtures in the plugins
``tests.support.postgres_server`` and ``tests.support.redis_server``, which the root
``conftest.py`` loads). What every kind of test needs is here: the repository root and a
free port (stdlib only, so the always-loaded server plugins stay cheap to import).
"""

from __future__ import annotations

import socket
from pathlib import Path

#: The repository root: the working directory of the processes the tests start.
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
