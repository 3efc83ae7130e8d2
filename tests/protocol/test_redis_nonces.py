"""Replay protection shared through Redis by two axons serving one hotkey."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import redis

from protocol.nonces import RedisNonceStore
from protocol.synapse import Echo
from tests.protocol.helpers import free_port, raw_post, signed_headers

REDIS_SERVER = shutil.which("redis-server", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/local/bin"]))

if REDIS_SERVER is None and os.environ.get("CANOPY_REQUIRE_REDIS") == "1":
    raise RuntimeError("redis-server is required by ./run.sh test but is not installed (apt-get install redis-server)")

pytestmark = [
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


def test_store_is_atomic_set_nx_with_expiry(redis_url):
    store = RedisNonceStore(redis_url, retention=30, prefix="unit:")
    assert store.check_and_store("hk", 1) is True
    assert store.check_and_store("hk", 1) is False
    assert store.check_and_store("other", 1) is True
    ttl_ms = redis.Redis.from_url(redis_url).pttl("unit:hk:1")
    assert 29_000 < ttl_ms <= 30_000


async def test_async_and_sync_paths_share_keys(redis_url):
    store = RedisNonceStore(redis_url, prefix="mixed:")
    assert await store.acheck_and_store("hk", 7) is True
    assert store.check_and_store("hk", 7) is False
    assert await store.acheck_and_store("hk", 7) is False
    await store.aclose()


async def test_replay_across_two_axons_of_one_hotkey_is_refused(make_axon, wallets, redis_url):
    stores = [RedisNonceStore(redis_url), RedisNonceStore(redis_url)]
    first = await make_axon(nonce_store=stores[0])
    second = await make_axon(nonce_store=stores[1])
    assert first.hotkey == second.hotkey and first.url != second.url

    path, body = Echo.route(), b'{"text":"once"}'
    headers = signed_headers(wallets.validator, first.hotkey, path, body)
    status, payload, _ = await raw_post(first.url + path, body, headers)
    assert status == 200 and payload == {"text": "once"}

    status, payload, _ = await raw_post(second.url + path, body, headers)
    assert status == 401 and payload["error"]["type"] == "replayed"
    assert len(first.spy.calls) == 1 and second.spy.calls == []
    for store in stores:
        await store.aclose()


async def test_unreachable_redis_refuses_with_503_rather_than_serving_unprotected(make_axon, wallets, redis_url):
    store = RedisNonceStore(redis_url)
    served = await make_axon(nonce_store=store)
    store.url = f"redis://127.0.0.1:{free_port()}/0"  # the server "goes away" after start-up
    await store.aclose()
    path, body = Echo.route(), b'{"text":"x"}'
    status, payload, _ = await raw_post(served.url + path, body, signed_headers(wallets.validator, served.hotkey, path, body))
    assert status == 503 and payload["error"]["type"] == "unavailable"
    assert served.spy.calls == []
