"""A schemathesis fuzz run against the gateway's own OpenAPI document: no request gets a 500.

Every operation of the document the running gateway serves (``GET /openapi.json`` of the
``gateway`` fixture: three real miner axons with the fake LLM chute, the app on uvicorn) is
fuzzed with schemathesis's hypothesis strategies, in the positive mode (bodies the
document allows) and the negative mode (bodies and parameters it forbids), with an admin
key (so ``/admin/*`` runs past auth and the paid routes reach miners), and a few more
examples per operation with whatever ``Authorization`` schemathesis draws from the
document's bearer scheme (none, empty, malformed, or an unknown token).

What counts as a failure, decided deliberately:

- a 500 (an unhandled exception, answered by ``api.app``'s last-resort handler) or any
  other 5xx not listed below: schemathesis's ``not_a_server_error`` check;
- 502 / 503 / 504 are the gateway's documented answers when the miners named by the
  request cannot serve it (``uids: [3]``, the broken, unverified miner: 503; a
  ``timeout`` of a millisecond: 504; every miner failed: 502). The fixture has working
  miners, so a valid request gets a 200; these three are accepted only as OpenAI
  error envelopes with their own codes;
- any error response (>= 400) that is not the OpenAI envelope
  ``{"error": {"message", "type", "param", "code"}}`` with an ``x-request-id``.

The fuzzer's copy of the document pins ``model`` to the model the fixture serves
(``fake-model``): with arbitrary strings every chat would stop at 404 ``model_not_found``
before any miner is called. Everything else is as the gateway documents it.

Bounded and deterministic: ``derandomize=True`` (the examples are a function of the
document), no example database, a fixed number of examples per operation and mode;
failures are collected rather than raised, so no time goes to shrinking, and all of them
are reported at once with a curl command that repeats each. The run makes a few hundred
requests in well under a minute on two cores.
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.support.gateway import MODEL, new_key

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]

AUTHED_EXAMPLES = 25  # per operation and generation mode, with the admin key
ANONYMOUS_EXAMPLES = 4  # per operation, without a key
UPSTREAM_CODES = {502: "upstream_error", 503: "no_miner_available", 504: "timeout"}
ENVELOPE_KEYS = {"message", "type", "param", "code"}


def _pin_models(document: dict[str, Any]) -> dict[str, Any]:
    """The document with every request schema's ``model`` limited to the served model."""
    pinned = copy.deepcopy(document)
    for schema in pinned.get("components", {}).get("schemas", {}).values():
        prop = schema.get("properties", {}).get("model")
        if prop is not None:
            pinned_model: dict[str, Any] = {"type": "string", "enum": [MODEL]}
            if {"type": "null"} in prop.get("anyOf", ()):  # POST /chat: optional, null picks the first model
                pinned_model = {"anyOf": [pinned_model, {"type": "null"}]}
            schema["properties"]["model"] = pinned_model
    return pinned


def _problem(case: Any, response: schemathesis.Response) -> str | None:
    """Why ``response`` (lower-case header names, each a list of values) is a failure, or None."""
    status = response.status_code
    if status in UPSTREAM_CODES:
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            return f"{status} without the OpenAI envelope: {response.text[:300]}"
        if error.get("code") != UPSTREAM_CODES[status]:
            return f"{status} with code {error.get('code')!r}: {response.text[:300]}"
        if "invalid_payload" in str(error.get("message")):  # the chute refused the request: a 400
            return f"{status} for a request the chute refused: {response.text[:300]}"
    else:
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except Exception as failure:  # schemathesis's FailureGroup / ServerError
            return f"{status}: {failure}\n{response.text[:300]}"
    if status >= 400:
        if not (response.headers.get("x-request-id") or [""])[0].startswith("req_"):
            return f"{status} without x-request-id"
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            return f"{status} without the OpenAI envelope: {response.text[:300]}"
        if not isinstance(error, dict) or set(error) != ENVELOPE_KEYS or not error["message"]:
            return f"{status} with a malformed envelope: {response.text[:300]}"
    return None


#: Headers that frame the HTTP message, owned by the HTTP server (uvicorn), never by a route.
TRANSPORT_HEADERS = {"transfer-encoding", "content-length", "connection", "host", "upgrade", "te", "trailer"}


def _fuzz(document: dict[str, Any], base_url: str, admin_key: str) -> dict[str, Any]:
    """Runs in a worker thread (the gateway serves on the test's event loop meanwhile)."""
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    failures: list[str] = []
    statuses: dict[int, int] = {}
    session = requests.Session()
    admin = {"authorization": f"Bearer {admin_key}"}

    def run(operation: Any, strategy: Any, headers: dict[str, str], examples: int) -> None:
        @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def check(case: Any) -> None:
            # Made-up framing headers (a random Transfer-Encoding) are refused by uvicorn's HTTP parser
            # before any application runs: the server's business, not the gateway's. Bearer auth is
            # declared, so schemathesis draws random tokens: use the key.
            drawn = {name: value for name, value in (case.headers or {}).items() if name.lower() not in TRANSPORT_HEADERS}
            case.headers = {**{name: value for name, value in drawn.items() if name.lower() != "authorization"}, **headers} \
                if headers else drawn
            response = case.call(base_url=base_url, session=session, timeout=30)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            problem = _problem(case, response)
            if problem is not None:
                failures.append(f"{operation.label}: {problem}\n  {case.as_curl_command()}")

        try:
            check()
        except Unsatisfiable:  # the negative mode of an operation with nothing to get wrong (GET /health)
            pass

    for operation in operations:
        positive = operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
        negative = operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)
        run(operation, positive, admin, AUTHED_EXAMPLES)
        run(operation, negative, admin, AUTHED_EXAMPLES)
        run(operation, st.one_of(positive, negative), {}, ANONYMOUS_EXAMPLES)
    session.close()
    return {"operations": sorted(op.label for op in operations), "statuses": statuses, "failures": failures}


async def test_fuzz_the_openapi_document_finds_no_server_error(gateway):
    admin_key = await new_key(gateway, "fuzz-admin", admin=True)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        served = await client.get("/openapi.json")
        assert served.status_code == 200
        document = served.json()
        # The fixture's miners answer a plain chat, so the positive cases can reach them.
        ok = await client.post("/v1/chat/completions", headers={"authorization": f"Bearer {admin_key}"},
                               json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        assert ok.status_code == 200, ok.text
    started = time.perf_counter()
    result = await asyncio.to_thread(_fuzz, _pin_models(document), gateway.url, admin_key)
    elapsed = time.perf_counter() - started
    requests_made = sum(result["statuses"].values())
    print(f"fuzz: {requests_made} requests over {len(result['operations'])} operations in {elapsed:.1f} s; "
          f"statuses {dict(sorted(result['statuses'].items()))}")
    paths = {label.split(" ", 1)[1] for label in result["operations"]}
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/chat", "/admin/keys", "/admin/keys/{name}",
            "/admin/logs", "/admin/stats", "/health", "/metrics"} <= paths
    assert result["statuses"].get(200, 0) > 0  # requests got through, not only refusals
    assert not result["failures"], "\n\n".join(result["failures"][:20])


async def test_chat_a_payload_the_chute_refuses_is_a_400_not_a_502(gateway):
    """Found by the fuzz run: ``POST /chat`` (validator shape, ``top_n``) relayed the chute's
    ``invalid_payload`` refusal as 502 ``upstream_error``; ``/v1/chat/completions`` answers 400."""
    key = await new_key(gateway, "fuzz-refused")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_p": 0}  # the chute wants > 0
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30,
                                 headers={"authorization": f"Bearer {key}"}) as client:
        for path, extra in (("/v1/chat/completions", {}), ("/chat", {"top_n": 1}), ("/chat", {})):
            response = await client.post(path, json={**body, **extra})
            assert response.status_code == 400, (path, extra, response.text)
            error = response.json()["error"]
            assert error["code"] == "invalid_payload" and "top_p" in error["message"], error
