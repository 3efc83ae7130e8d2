"""The gateway end to end: the official ``openai`` client and raw HTTP against real miners.

Set-up in ``tests/api/conftest.py`` (three miners with real instance processes, the app
on uvicorn). Every test here runs on the module's event loop.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI
from sqlalchemy import select

from store.api_tables import RequestLog
from api.upstream import NoAnswer, Upstream
from tests.support.gateway import MAX_BODY, MODEL, PROMPT, assert_envelope, chat, invocations, log_row, new_key, post
from tests.validator.chutes.fake_llm import completion_words

pytestmark = pytest.mark.asyncio(loop_scope="module")


# --- the official client ----------------------------------------------------------------------


async def test_openai_client_chat_non_streaming_has_usage_and_the_serving_miner(gateway):
    key = await new_key(gateway, "oai-plain", credits=10)
    client = AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key)
    before = len(await invocations(gateway))
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=8, seed=3)
    answer = raw.parse()
    assert answer.choices[0].message.content == "".join(completion_words(PROMPT, 3, 8))
    assert answer.usage.completion_tokens == len(completion_words(PROMPT, 3, 8))
    assert answer.usage.prompt_tokens == len(PROMPT.split())
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-canopy-miner-uid"] == "1", "verified, least loaded, best score"
    assert raw.headers["x-canopy-miner-hotkey"] == gateway.hotkeys[0]
    assert (await gateway.keys.get("oai-plain")).credits == 9

    rows = (await invocations(gateway))[before:]
    assert [(r.miner_hotkey, r.source, r.ok) for r in rows] == [(gateway.hotkeys[0], "organic", True)]
    assert rows[0].completion_tokens == answer.usage.completion_tokens and rows[0].latency_s > 0
    log = await log_row(gateway, raw.headers["x-request-id"])
    assert (log.status, log.uid, log.hotkey, log.model, log.strategy, json.loads(log.miners_tried), log.charged) == (
        200, 1, gateway.hotkeys[0], MODEL, "default", [1], 1)
    assert log.completion_tokens == answer.usage.completion_tokens and log.prompt is None and log.answer is None


async def test_openai_client_chat_streaming_yields_chunks_and_ends(gateway):
    key = await new_key(gateway, "oai-stream")
    client = AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key)
    stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}],
                                                  max_tokens=8, seed=3, stream=True)
    pieces, usage = [], None
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces) == "".join(completion_words(PROMPT, 3, 8))
    assert usage is not None and usage.completion_tokens == len(completion_words(PROMPT, 3, 8))


async def test_the_sync_openai_client_lists_models_and_completes(gateway):
    key = await new_key(gateway, "oai-sync")

    def run():
        client = OpenAI(base_url=gateway.url + "/v1", api_key=key)
        listed = [model.id for model in client.models.list()]
        text = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, seed=3)
        return listed, text

    listed, text = await asyncio.to_thread(run)
    assert listed == [MODEL]
    assert text.choices[0].text == "".join(completion_words(PROMPT, 3, 8)) and text.usage.total_tokens > 0


async def test_models_are_filtered_by_what_the_key_may_use(gateway):
    key = await new_key(gateway, "other-models", models=["someone-else"])
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        response = await client.get("/v1/models", headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200 and response.json() == {"object": "list", "data": []}
    assert_envelope(await post(gateway, key, chat()), 404, param="model")


# --- raw HTTP: streams, failover ---------------------------------------------------------------


async def test_a_raw_stream_is_sse_ending_in_done_with_the_miner_headers(gateway):
    key = await new_key(gateway, "raw-stream")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        async with client.stream("POST", "/v1/chat/completions", json=chat(stream=True),
                                 headers={"authorization": f"Bearer {key}"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-canopy-miner-uid"] in ("1", "2")
            body = b"".join([part async for part in response.aiter_bytes()]).decode()
    assert body.startswith("data: ") and body.endswith("data: [DONE]\n\n")


async def test_failover_when_the_first_miner_fails_before_its_first_byte(gateway):
    key = await new_key(gateway, "failover", credits=5)
    before = len(await invocations(gateway))
    response = await post(gateway, key, chat(), headers={"x-canopy-strategy": "uids:3,2"})
    assert response.status_code == 200, response.text
    assert response.headers["x-canopy-miner-uid"] == "2" and response.json()["usage"]["completion_tokens"] > 0
    rows = (await invocations(gateway))[before:]
    assert [(r.miner_hotkey, r.ok) for r in rows] == [(gateway.hotkeys[2], False), (gateway.hotkeys[1], True)]
    assert rows[0].error and rows[0].source == rows[1].source == "organic"
    log = await log_row(gateway, response.headers["x-request-id"])
    assert json.loads(log.miners_tried) == [3, 2] and log.uid == 2 and log.strategy == "uids:3,2"
    assert (await gateway.keys.get("failover")).credits == 4, "one answer, one credit"

    raced = await post(gateway, key, chat(stream=True), headers={"x-canopy-strategy": "uids:3,1", "x-canopy-race": "2"})
    assert raced.status_code == 200 and raced.headers["x-canopy-miner-uid"] == "1"
    assert raced.text.endswith("data: [DONE]\n\n")


async def test_only_failing_miners_give_502_and_refund_the_credit(gateway):
    key = await new_key(gateway, "all-fail", credits=2)
    response = await post(gateway, key, chat(), headers={"x-canopy-strategy": "uids:3"})
    assert_envelope(response, 502, type_="api_error")
    assert (await gateway.keys.get("all-fail")).credits == 2


async def test_no_miner_is_503_with_a_clear_message(gateway):
    key = await new_key(gateway, "nobody", credits=2)
    error = assert_envelope(await post(gateway, key, chat(), headers={"x-canopy-strategy": "uids:99"}), 503)
    assert "no miner" in error["message"] and error["code"] == "no_miner_available"
    assert (await gateway.keys.get("nobody")).credits == 2


# --- auth, credits, limits ------------------------------------------------------------------------


async def test_missing_unknown_disabled_and_expired_keys_get_401(gateway):
    disabled = await new_key(gateway, "disabled", disabled=True)
    expired = await new_key(gateway, "expired", expires_at=time.time() - 5)
    for key in (None, "cnp_notakey", disabled, expired):
        response = await post(gateway, key, chat())
        assert_envelope(response, 401, type_="authentication_error")
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        assert_envelope(await client.get("/v1/models"), 401)
    log = await log_row(gateway, response.headers["x-request-id"])
    assert log.status == 401 and log.key_id is None and log.route == "/v1/chat/completions"


async def test_credits_serve_exactly_m_of_n_concurrent_requests(gateway):
    key = await new_key(gateway, "three-credits", credits=3)
    responses = await asyncio.gather(*(post(gateway, key, chat()) for _ in range(7)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 3 + [402] * 4, [r.text for r in responses if r.status_code not in (200, 402)]
    for refused in (r for r in responses if r.status_code == 402):
        assert_envelope(refused, 402, type_="insufficient_quota")
    assert (await gateway.keys.get("three-credits")).credits == 0


async def test_rate_limits_give_429_with_headers(gateway):
    key = await new_key(gateway, "limited", rate_limits=["2/60s"])
    first = await post(gateway, key, chat())
    assert first.status_code == 200 and first.headers["x-ratelimit-limit"] == "2"
    assert first.headers["x-ratelimit-remaining"] == "1"
    await post(gateway, key, chat())
    refused = await post(gateway, key, chat())
    assert_envelope(refused, 429, type_="rate_limit_error")
    assert int(refused.headers["retry-after"]) >= 1 and refused.headers["x-ratelimit-remaining"] == "0"


# --- bad input ---------------------------------------------------------------------------------------


async def test_bad_bodies_get_400_or_404_with_param(gateway):
    key = await new_key(gateway, "bad-input", credits=5)
    assert_envelope(await post(gateway, key, b"{not json"), 400)
    assert_envelope(await post(gateway, key, b"[1, 2]"), 400)
    assert_envelope(await post(gateway, key, {"model": MODEL, "messages": []}), 400, param="messages")
    assert_envelope(await post(gateway, key, {"model": MODEL, "messages": "hi"}), 400, param="messages")
    assert_envelope(await post(gateway, key, {"messages": [{"role": "user", "content": "x"}]}), 400, param="model")
    assert_envelope(await post(gateway, key, chat(stream="yes")), 400, param="stream")
    assert_envelope(await post(gateway, key, chat(max_tokens="many")), 400, param="max_tokens")
    assert_envelope(await post(gateway, key, chat(model="no-such-model")), 404, param="model")
    assert_envelope(await post(gateway, key, chat(), headers={"x-canopy-strategy": "best"}), 400, param="strategy")
    assert_envelope(await post(gateway, key, {"model": MODEL}, path="/v1/completions"), 400, param="prompt")
    assert (await gateway.keys.get("bad-input")).credits == 5, "refused requests cost nothing"


async def test_an_oversized_body_gets_413(gateway):
    key = await new_key(gateway, "big")
    huge = chat(messages=[{"role": "user", "content": "x" * (MAX_BODY + 10)}])
    response = await post(gateway, key, huge)
    assert_envelope(response, 413)
    assert (await log_row(gateway, response.headers["x-request-id"])).status == 413


async def test_health_metrics_docs_and_unknown_routes(gateway):
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["models"] == [MODEL]
        ids = [health.headers["x-request-id"], *[(await client.get("/health")).headers["x-request-id"] for _ in range(3)]]
        assert len(set(ids)) == 4 and all(re.fullmatch(r"req_[0-9a-f]{32}", one) for one in ids)
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200 and "canopy_api_requests_total" in metrics.text
        assert (await client.get("/docs")).status_code == 200
        schema = (await client.get("/openapi.json")).json()
        assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(schema["paths"])
        body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"] == {"$ref": "#/components/schemas/ChatCompletionIn"}
        assert {"ChatCompletionIn", "ChatMessageIn", "CompletionIn"} <= set(schema["components"]["schemas"])
        assert_envelope(await client.get("/nope"), 404)


# --- strategies, mid-stream failures, disconnects ---------------------------------------------------


async def test_top_n_goes_by_incentive_and_fails_over_within_the_top(gateway):
    key = await new_key(gateway, "top-n", default_strategy="top_n:2")
    response = await post(gateway, key, chat())
    assert response.status_code == 200 and response.headers["x-canopy-miner-uid"] == "2"
    log = await log_row(gateway, response.headers["x-request-id"])
    assert log.strategy == "top_n:2" and json.loads(log.miners_tried) == [3, 2], "uid 3 has the most incentive"


async def test_a_failure_after_the_first_byte_is_a_typed_sse_error_event(gateway):
    key = await new_key(gateway, "flaky", credits=3)
    before = len(await invocations(gateway))
    response = await post(gateway, key, {**chat(stream=True), "model": "flaky-model"},
                          headers={"x-canopy-strategy": "uids:3"})
    assert response.status_code == 200 and response.headers["x-canopy-miner-uid"] == "3"
    events = [line[6:] for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and "half" in response.text
    error = json.loads(events[-2])["error"]
    assert error["type"] == "api_error" and error["code"] == "upstream_error" and "mid-stream" in error["message"]
    assert (await gateway.keys.get("flaky")).credits == 3, "a broken answer is not charged"
    rows = (await invocations(gateway))[before:]
    assert [(r.miner_hotkey, r.ok) for r in rows] == [(gateway.hotkeys[2], False)] and rows[0].error
    log = await log_row(gateway, response.headers["x-request-id"])
    assert log.status == 502 and log.charged == 0


async def test_a_client_that_hangs_up_cancels_the_miner_call(gateway):
    key = await new_key(gateway, "hangup", credits=3)
    directory = gateway.directory
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        async with client.stream("POST", "/v1/chat/completions", json=chat(stream=True, fake_fault="slow"),
                                 headers={"authorization": f"Bearer {key}"}) as response:
            request_id = response.headers["x-request-id"]
            async for _ in response.aiter_bytes():
                break  # the first event came; the chute now sleeps 2 s
            assert sum(directory.in_flight.values()) == 1
    deadline = time.monotonic() + 1.5
    while sum(directory.in_flight.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert directory.in_flight == {}, "the miner call was cancelled well before the chute's 2 s sleep ended"
    log = await log_row(gateway, request_id)
    assert log.status == 499 and log.charged == 0
    assert (await gateway.keys.get("hangup")).credits == 3


async def test_a_miner_that_does_not_answer_in_time_is_a_timeout_and_is_recorded(gateway):
    quick = Upstream(gateway.upstream.dendrite, gateway.directory, gateway.store, timeout_s=0.5)
    routes = gateway.directory.candidates(MODEL, "uids:1")
    before = len(await invocations(gateway))
    started = time.monotonic()
    with pytest.raises(NoAnswer) as failure:  # the miner buffers the whole (2 s) answer before its first byte
        await quick.open(routes, "/v1/chat/completions", chat(stream=True, fake_fault="slow"), stream=False)
    assert failure.value.timed_out and failure.value.tried == [1] and time.monotonic() - started < 1.5
    assert gateway.directory.in_flight == {}
    await quick.drain()
    rows = (await invocations(gateway))[before:]
    assert [(r.miner_hotkey, r.ok, r.error) for r in rows] == [(gateway.hotkeys[0], False, "timeout")]


async def test_a_client_that_hangs_up_before_the_first_byte_cancels_the_miner_call(gateway):
    key = await new_key(gateway, "impatient", credits=2)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):  # the chute answers after 3 s; the client leaves after 0.3 s
        await post(gateway, key, {**chat(), "model": "flaky-model"}, headers={"x-canopy-strategy": "uids:3"},
                   timeout=0.3)
    deadline = time.monotonic() + 1.5
    while sum(gateway.directory.in_flight.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert gateway.directory.in_flight == {} and time.monotonic() - started < 2.5
    await gateway.app.state.request_log.drain()
    async with gateway.store.sessions() as session:
        [log] = (await session.scalars(select(RequestLog).where(RequestLog.key_id == (
            await gateway.keys.get("impatient")).id))).all()
    assert (log.status, log.error, log.charged, json.loads(log.miners_tried)) == (499, "client_closed", 0, [3])
    assert (await gateway.keys.get("impatient")).credits == 2


async def test_an_unexpected_failure_is_a_500_envelope_and_refunds(gateway, monkeypatch):
    key = await new_key(gateway, "crash", credits=1)

    async def explode(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(gateway.upstream, "open", explode)
    response = await post(gateway, key, chat())
    assert_envelope(response, 500, type_="server_error")
    assert (await gateway.keys.get("crash")).credits == 1
    assert (await log_row(gateway, response.headers["x-request-id"])).status == 500


async def test_request_ids_differ_between_replicas():
    from api.app import RequestIdMiddleware

    first, second = RequestIdMiddleware(None, 1), RequestIdMiddleware(None, 1)
    assert first.id_prefix != second.id_prefix and len(first.id_prefix) == len("req_") + 16
