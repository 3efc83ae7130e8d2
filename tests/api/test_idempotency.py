"""``Idempotency-Key`` end to end against real miners (``tests/api/conftest.py``'s gateway on uvicorn)."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select

from api.idempotency import IdempotencyStore, request_hash
from store.api_tables import IdempotencyRecord
from tests.support.gateway import assert_envelope, chat, invocations, new_key, post

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def credits(gateway, name: str) -> int | None:
    return (await gateway.keys.get(name)).credits


async def test_a_retry_replays_the_first_answer_without_a_miner_or_a_charge(gateway):
    key = await new_key(gateway, "idem-plain", credits=5)
    before = len(await invocations(gateway))
    first = await post(gateway, key, chat(), headers={"Idempotency-Key": "order-1"})
    assert first.status_code == 200, first.text
    assert await credits(gateway, "idem-plain") == 4
    assert len(await invocations(gateway)) == before + 1
    again = await post(gateway, key, chat(), headers={"Idempotency-Key": "order-1"})
    assert again.status_code == 200 and again.content == first.content
    for name in ("x-canopy-miner-uid", "x-canopy-miner-hotkey"):
        assert again.headers[name] == first.headers[name]
    assert again.headers["content-type"].startswith("application/json")
    assert again.headers["x-canopy-idempotent-replay"] == "true" and "x-canopy-idempotent-replay" not in first.headers
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert await credits(gateway, "idem-plain") == 4
    assert len(await invocations(gateway)) == before + 1
    other = await post(gateway, key, chat(), headers={"Idempotency-Key": "order-2"})  # a new key: a new answer
    assert other.status_code == 200 and "x-canopy-idempotent-replay" not in other.headers
    assert await credits(gateway, "idem-plain") == 3


async def test_the_same_idempotency_key_with_another_body_or_route_is_422(gateway):
    key = await new_key(gateway, "idem-mismatch")
    assert (await post(gateway, key, chat(), headers={"Idempotency-Key": "k"})).status_code == 200
    error = assert_envelope(await post(gateway, key, chat(seed=4), headers={"Idempotency-Key": "k"}), 422,
                            param="Idempotency-Key")
    assert error["code"] == "idempotency_key_reused"
    other_route = await post(gateway, key, {"model": "fake-model", "prompt": "x", "max_tokens": 2},
                             path="/v1/completions", headers={"Idempotency-Key": "k"})
    assert_envelope(other_route, 422, param="Idempotency-Key")


async def test_idempotency_keys_are_per_api_key(gateway):
    alice, bob = await new_key(gateway, "idem-alice"), await new_key(gateway, "idem-bob")
    first = await post(gateway, alice, chat(), headers={"Idempotency-Key": "shared"})
    other = await post(gateway, bob, chat(seed=9), headers={"Idempotency-Key": "shared"})
    assert first.status_code == other.status_code == 200
    assert "x-canopy-idempotent-replay" not in other.headers and other.content != first.content


async def test_concurrent_duplicates_call_one_miner_and_get_the_same_answer(gateway):
    key = await new_key(gateway, "idem-race", credits=10)
    before = len(await invocations(gateway))
    answers = await asyncio.gather(*(post(gateway, key, chat(seed=11), headers={"Idempotency-Key": "burst"})
                                     for _ in range(6)))
    assert [answer.status_code for answer in answers] == [200] * 6
    assert len({answer.content for answer in answers}) == 1
    assert sum("x-canopy-idempotent-replay" in answer.headers for answer in answers) == 5
    assert len(await invocations(gateway)) == before + 1
    assert await credits(gateway, "idem-race") == 9


async def test_a_stream_is_stored_and_replayed_as_sse(gateway):
    key = await new_key(gateway, "idem-stream", credits=5)
    first = await post(gateway, key, chat(stream=True), headers={"Idempotency-Key": "s1"})
    assert first.status_code == 200 and first.text.rstrip().endswith("data: [DONE]")
    await gateway.app.state.idempotency.drain()  # the stream stores its body off the response path
    again = await post(gateway, key, chat(stream=True), headers={"Idempotency-Key": "s1"})
    assert again.status_code == 200 and again.text == first.text
    assert again.headers["content-type"].startswith("text/event-stream")
    assert again.headers["x-canopy-miner-uid"] == first.headers["x-canopy-miner-uid"]
    assert await credits(gateway, "idem-stream") == 4


async def test_a_failed_request_frees_the_key_for_a_retry(gateway):
    key = await new_key(gateway, "idem-fail", credits=5)
    failed = await post(gateway, key, chat(strategy="uids:3"), headers={"Idempotency-Key": "f"})  # broken miner
    assert failed.status_code in (502, 503), failed.text
    await gateway.app.state.idempotency.drain()
    async with gateway.store.sessions() as session:
        rows = (await session.scalars(select(IdempotencyRecord).where(IdempotencyRecord.idempotency_key == "f"))).all()
    assert rows == []
    assert await credits(gateway, "idem-fail") == 5
    retried = await post(gateway, key, chat(strategy="uids:3"), headers={"Idempotency-Key": "f"})
    assert retried.status_code == failed.status_code and "x-canopy-idempotent-replay" not in retried.headers


async def test_a_bad_idempotency_key_is_400(gateway):
    key = await new_key(gateway, "idem-bad")
    assert_envelope(await post(gateway, key, chat(), headers={"Idempotency-Key": "x" * 300}), 400,
                    param="Idempotency-Key")


async def test_records_expire_and_are_pruned(gateway):
    store = IdempotencyStore(gateway.keys.engine, ttl_s=60.0, wait_s=0.2)
    digest = request_hash("/v1/chat/completions", {"a": 1})
    claim = await store.claim(999, "old", digest, now=time.time() - 120)
    await claim.finish(200, "{}", {"content-type": "application/json"})
    fresh = await store.claim(999, "old", digest)  # expired: claimed afresh, not replayed
    assert fresh.replay is None and fresh.row_id is not None
    with pytest.raises(Exception) as pending:  # still pending: a duplicate waits, then gets 409
        await store.claim(999, "old", digest)
    assert getattr(pending.value, "status", None) == 409
    await fresh.finish(200, "{\"ok\": 1}", {})
    assert (await store.claim(999, "old", digest)).replay.body == "{\"ok\": 1}"
    stale = await store.claim(999, "older", digest, now=time.time() - 7200)
    await stale.finish(200, "{}", {})
    assert await store.prune() >= 1
    async with gateway.store.sessions() as session:
        left = (await session.scalars(select(IdempotencyRecord.idempotency_key)
                                      .where(IdempotencyRecord.key_id == 999))).all()
    assert left == ["old"]


async def test_chat_retries_replay_both_bittensor_shapes(gateway):
    key = await new_key(gateway, "idem-chat", credits=5)
    before = len(await invocations(gateway))
    validator_body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "seed": 21}
    first = await post(gateway, key, validator_body, path="/chat", headers={"Idempotency-Key": "v1"})
    again = await post(gateway, key, validator_body, path="/chat", headers={"Idempotency-Key": "v1"})
    assert first.status_code == again.status_code == 200 and again.json() == first.json()
    assert again.headers["x-canopy-idempotent-replay"] == "true"
    assert again.headers["x-canopy-miner-uid"] == first.headers["x-canopy-miner-uid"]
    sn1_body = {"roles": ["user"], "messages": ["hi"], "max_tokens": 8, "seed": 22, "stream": True}
    streamed = await post(gateway, key, sn1_body, path="/chat", headers={"Idempotency-Key": "s1"})
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    await gateway.app.state.idempotency.drain()
    replayed = await post(gateway, key, sn1_body, path="/chat", headers={"Idempotency-Key": "s1"})
    assert replayed.text == streamed.text and replayed.headers["content-type"].startswith("text/event-stream")
    assert await credits(gateway, "idem-chat") == 3, "two answers charged, the replays free"
    assert len(await invocations(gateway)) == before + 2
    other_shape = await post(gateway, key, {**sn1_body, "stream": False}, path="/chat", headers={"Idempotency-Key": "s1"})
    assert_envelope(other_shape, 422, param="Idempotency-Key")
