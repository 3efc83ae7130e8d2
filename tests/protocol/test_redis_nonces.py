"""Replay protection shared through Redis by two axons serving one hotkey."""

from __future__ import annotations


import redis

from protocol.nonces import RedisNonceStore
from protocol.synapse import Echo
from tests.support import free_port
from tests.support.network import raw_post, signed_headers
from tests.support.redis_server import needs_redis

pytestmark = needs_redis


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
