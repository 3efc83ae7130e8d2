"""A real redis-server on a free loopback port, for the tests that need one (``./run.sh test``
installs the Debian package; ``CANOPY_REQUIRE_REDIS=1`` makes its absence an error)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import redis

from tests.support import free_port

REDIS_SERVER = shutil.which("redis-server", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/local/bin"]))

if REDIS_SERVER is None and os.environ.get("CANOPY_REQUIRE_REDIS") == "1":
    raise RuntimeError("redis-server is required by ./run.sh test but is not installed (apt-get install redis-server)")

needs_redis = [
    pytest.mark.redis,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server binary not installed (./run.sh installs it)"),
]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    client.close()
    yield url
    process.terminate()
    process.wait(timeout=10)
