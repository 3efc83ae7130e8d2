"""``POST /chat`` end to end: both Bittensor shapes against the real miners of ``tests/api/conftest.py``.

uid 1 and uid 2 host the honest fake LLM (verified), uid 3 a chute of the same model that
fails before its first byte (unverified); incentive grows with the uid (top_n:2 is 3, 2).
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.gateway import MODEL, PROMPT, assert_envelope, log_row, new_key, post
from tests.validator.chutes.fake_llm import completion_words

pytestmark = pytest.mark.asyncio(loop_scope="module")
ANSWER = "".join(completion_words(PROMPT, 3, 8))


def validator_shape(**extra) -> dict:
    return {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8, "seed": 3, **extra}


def sn1_shape(**extra) -> dict:
    return {"roles": ["user"], "messages": [PROMPT], "max_tokens": 8, "seed": 3, **extra}


async def chat(gateway, key, body, **kwargs) -> httpx.Response:
    return await post(gateway, key, body, path="/chat", **kwargs)


# --- the validator-endpoint shape ---------------------------------------------------------------


async def test_validator_shape_default_answers_with_one_choice_and_headers(gateway):
    key = await new_key(gateway, "chat-plain", credits=3)
    response = await chat(gateway, key, validator_shape(model=MODEL))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["failed_responses"] == []
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["uid"] == 1 and choice["responder_hotkey"] == gateway.hotkeys[0]
    assert choice["message"] == {"role": "assistant", "content": ANSWER} and choice["response_ms"] > 0
    assert response.headers["x-request-id"].startswith("req_")
    assert (response.headers["x-canopy-miner-uid"], response.headers["x-canopy-miner-hotkey"]) == (
        "1", gateway.hotkeys[0])
    assert (await gateway.keys.get("chat-plain")).credits == 2
    log = await log_row(gateway, response.headers["x-request-id"])
    assert (log.route, log.status, log.uid, log.model, log.strategy, log.charged) == (
        "/chat", 200, 1, MODEL, "default", 1)
    assert log.completion_tokens == len(completion_words(PROMPT, 3, 8))


async def test_validator_shape_uids_queries_each_and_lists_failures(gateway):
    key = await new_key(gateway, "chat-uids", credits=3)
    response = await chat(gateway, key, validator_shape(uids=[2, 3, 1], respond_on_first_success=False))
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(c["index"], c["uid"]) for c in body["choices"]] == [(0, 2), (1, 1)]
    assert all(c["message"]["content"] == ANSWER for c in body["choices"])
    [failed] = body["failed_responses"]
    assert failed["uid"] == 3 and failed["responder_hotkey"] == gateway.hotkeys[2] and failed["error"]
    assert response.headers["x-canopy-miner-uid"] == "2"
    assert (await gateway.keys.get("chat-uids")).credits == 2, "one request, one credit"
    log = await log_row(gateway, response.headers["x-request-id"])
    assert sorted(json.loads(log.miners_tried)) == [1, 2, 3] and log.strategy == "uids:2,3,1"


async def test_validator_shape_top_n_goes_by_incentive(gateway):
    key = await new_key(gateway, "chat-top-n")
    response = await chat(gateway, key, validator_shape(top_n=2, respond_on_first_success=False))
    assert response.status_code == 200, response.text
    body = response.json()
    assert [c["uid"] for c in body["choices"]] == [2] and [f["uid"] for f in body["failed_responses"]] == [3]


async def test_respond_on_first_success_returns_one_choice(gateway):
    key = await new_key(gateway, "chat-first")
    response = await chat(gateway, key, validator_shape(uids=[1, 2], respond_on_first_success=True))
    assert response.status_code == 200, response.text
    [choice] = response.json()["choices"]
    assert choice["uid"] in (1, 2) and choice["message"]["content"] == ANSWER
    assert response.headers["x-canopy-miner-uid"] == str(choice["uid"])
    assert gateway.directory.in_flight == {}, "the slower miner's call was cancelled"


async def test_only_failing_miners_give_502_and_refund(gateway):
    key = await new_key(gateway, "chat-fail", credits=1)
    response = await chat(gateway, key, validator_shape(uids=[3]))
    assert_envelope(response, 502, type_="api_error")
    assert (await gateway.keys.get("chat-fail")).credits == 1


# --- the Subnet 1 API shape ----------------------------------------------------------------------


def parse_sse(text: str) -> list[dict]:
    events = [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


async def test_sn1_shape_streams_chunks_with_the_fields(gateway):
    key = await new_key(gateway, "sn1-stream", credits=2)
    response = await chat(gateway, key, sn1_shape(k=2, sampling_mode="top_incentive", exclude=[3]))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = parse_sse(response.text)
    fields = {"delta", "finish_reason", "accumulated_chunks", "accumulated_chunks_timings", "timestamp",
              "sequence_number", "selected_uid"}
    assert chunks and all(fields <= set(c) for c in chunks)
    assert [c["sequence_number"] for c in chunks] == list(range(1, len(chunks) + 1))
    assert "".join(c["delta"] for c in chunks) == ANSWER
    last = chunks[-1]
    assert "".join(last["accumulated_chunks"]) == ANSWER and last["finish_reason"] is not None
    assert len(last["accumulated_chunks_timings"]) == len(last["accumulated_chunks"])
    assert last["accumulated_chunks_timings"] == sorted(last["accumulated_chunks_timings"])
    served = response.headers["x-canopy-miner-uid"]
    assert served in ("1", "2") and {c["selected_uid"] for c in chunks} == {int(served)}, "uid 3 excluded"
    assert (await gateway.keys.get("sn1-stream")).credits == 1
    log = await log_row(gateway, response.headers["x-request-id"])
    assert log.status == 200 and 3 not in json.loads(log.miners_tried) and log.strategy == "top_n:2"


async def test_sn1_shape_ndjson_and_random_sampling_honour_exclude(gateway):
    key = await new_key(gateway, "sn1-ndjson")
    for _ in range(3):
        response = await chat(gateway, key, sn1_shape(k=3, exclude=[1]), headers={"accept": "application/x-ndjson"})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/x-ndjson")
        chunks = [json.loads(line) for line in response.text.splitlines() if line]
        assert {c["selected_uid"] for c in chunks} == {2}, "uid 1 excluded, uid 3 unverified"
        assert "".join(chunks[-1]["accumulated_chunks"]) == ANSWER


async def test_sn1_shape_error_chunk_after_the_stream_started(gateway):
    key = await new_key(gateway, "sn1-flaky", credits=1)
    response = await chat(gateway, key, sn1_shape(model="flaky-model", k=1, sampling_mode="top_incentive"))
    assert response.status_code == 200 and response.headers["x-canopy-miner-uid"] == "3"
    chunks = parse_sse(response.text)
    assert chunks[0]["delta"] == "half"
    error = chunks[-1]
    assert error["finish_reason"] == "error" and error["error"]["code"] == "upstream_error"
    assert error["sequence_number"] == len(chunks) and error["accumulated_chunks"] == ["half"]
    assert (await gateway.keys.get("sn1-flaky")).credits == 1, "a broken answer is not charged"


async def test_sn1_shape_not_streamed_prefers_longest_or_shortest(gateway):
    key = await new_key(gateway, "sn1-prefer")
    for prefer in ("longest", "shortest"):
        response = await chat(gateway, key, sn1_shape(stream=False, k=2, sampling_mode="top_incentive",
                                                     prefer=prefer))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["selected_uid"] == 2 and body["message"] == {"role": "assistant", "content": ANSWER}
        assert [r["uid"] for r in body["responses"]] == [2] and [f["uid"] for f in body["failed_responses"]] == [3]
        assert response.headers["x-canopy-miner-uid"] == "2"
    first = await chat(gateway, key, sn1_shape(stream=False, k=2, sampling_mode="top_incentive"))
    assert first.status_code == 200 and first.json()["selected_uid"] == 2, "no prefer: the first answer"
    assert [r["uid"] for r in first.json()["responses"]] == [2]


# --- bad input ------------------------------------------------------------------------------------------


async def test_bad_shapes_get_400_with_param_and_cost_nothing(gateway):
    key = await new_key(gateway, "chat-bad", credits=5)
    assert_envelope(await chat(gateway, key, b"{not json"), 400)
    assert_envelope(await chat(gateway, key, validator_shape(k=2)), 400, param="roles")
    assert_envelope(await chat(gateway, key, {**sn1_shape(), "uids": [1]}), 400, param="uids")
    assert_envelope(await chat(gateway, key, sn1_shape(roles=["user", "user"])), 400, param="roles")
    assert_envelope(await chat(gateway, key, sn1_shape(roles=["wizard"])), 400, param="roles.0")
    assert_envelope(await chat(gateway, key, sn1_shape(k=0)), 400, param="k")
    assert_envelope(await chat(gateway, key, sn1_shape(sampling_mode="best")), 400, param="sampling_mode")
    assert_envelope(await chat(gateway, key, sn1_shape(prefer="middle")), 400, param="prefer")
    assert_envelope(await chat(gateway, key, validator_shape(uids=[1], top_n=2)), 400, param="top_n")
    assert_envelope(await chat(gateway, key, validator_shape(messages=[])), 400, param="messages")
    assert_envelope(await chat(gateway, key, validator_shape(top_n="two")), 400, param="top_n")
    assert_envelope(await chat(gateway, key, validator_shape(surprise=1)), 400, param="surprise")
    assert_envelope(await chat(gateway, key, validator_shape(model="no-such-model")), 404, param="model")
    assert_envelope(await chat(gateway, key, validator_shape(uids=[99])), 503)
    assert (await gateway.keys.get("chat-bad")).credits == 5


async def test_no_key_is_401(gateway):
    for key in (None, "cnp_notakey"):
        assert_envelope(await chat(gateway, key, validator_shape()), 401, type_="authentication_error")
    response = await chat(gateway, None, sn1_shape())
    assert_envelope(response, 401)
    log = await log_row(gateway, response.headers["x-request-id"])
    assert log.status == 401 and log.route == "/chat"


async def test_chat_is_in_the_openapi_document(gateway):
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        schema = (await client.get("/openapi.json")).json()
    assert "/chat" in schema["paths"]
    assert {"ValidatorChatIn", "SubnetOneChatIn"} <= set(schema["components"]["schemas"])
