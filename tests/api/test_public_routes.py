"""Public chute calls through real miners: ``/chutes/{owner}/{name}{public_api_path}`` and a chute's own host.

Two miners host ``tests.api.chutes.public_chutes`` (``alice/toolbox``, public; ``alice/diary``,
private): uid 1 at the registry's revision, uid 2 (the better score) reports another revision
of the toolbox and must get no traffic. The gateway waits 1 s on a cold start and serves chute
hosts under ``chutes.test``.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
import pytest_asyncio

from api.public_routes import ROUTE
from canopy.chute import chute_id
from tests.api.chutes.public_chutes import PIXEL
from tests.support.gateway import assert_envelope, invocations, log_row, new_key, serve_gateway
from tests.support.store import bundle_of, description

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOOLBOX, DIARY = "tests.api.chutes.public_chutes:toolbox", "tests.api.chutes.public_chutes:diary"
STALE = "f" * 64
TOOLBOX_ID = chute_id("alice", "toolbox")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def subnet(tmp_path_factory):
    async with serve_gateway(tmp_path_factory.mktemp("public"), [[TOOLBOX, DIARY], [TOOLBOX]],
                             verified={0: "dev-a", 1: "dev-b"}, scores=[0.1, 0.9], private={DIARY},
                             revisions={(1, TOOLBOX): STALE},
                             api={"cold_start_wait_s": 1.0, "chute_domain": "chutes.test"}) as running:
        running.alice = await new_key(running, "alice", owner="alice", credits=100)
        yield running


async def call(subnet, key: str | None, path: str, body=None, *, method: str = "POST", **kwargs) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=subnet.url, timeout=30) as client:
        return await client.request(method, path, json=body, headers={**headers, **kwargs.pop("headers", {})}, **kwargs)


async def test_a_call_is_served_charged_logged_and_recorded(subnet):
    key = await new_key(subnet, "plain", credits=3)  # no owner: public chutes only
    before = len(await invocations(subnet))
    response = await call(subnet, key, "/chutes/alice/toolbox/greet", {"name": "ann", "times": 2})
    assert response.status_code == 200, response.text
    assert response.json() == {"greeting": "hello ann hello ann"}
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-canopy-miner-uid"] == "1" and response.headers["x-canopy-miner-hotkey"] == subnet.hotkeys[0]
    assert (await subnet.keys.get("plain")).credits == 2
    row = await log_row(subnet, response.headers["x-request-id"])
    assert (row.route, row.model, row.status, row.charged, row.uid) == (ROUTE, "alice/toolbox", 200, 1, 1)
    [recorded] = (await invocations(subnet))[before:]
    assert (recorded.chute_id, recorded.miner_hotkey, recorded.source, recorded.ok, recorded.steered) == \
        (TOOLBOX_ID, subnet.hotkeys[0], "organic", True, False)


async def test_the_cords_422_is_relayed_naming_the_field_and_not_charged(subnet):
    key = await new_key(subnet, "sloppy", credits=1)
    response = await call(subnet, key, "/chutes/alice/toolbox/greet", {"times": 2})
    error = assert_envelope(response, 422, param="name")
    assert error["code"] == "invalid_payload"
    assert any("name" in [str(part) for part in field["loc"]] for field in response.json()["error"]["detail"])
    too_many = await call(subnet, key, "/chutes/alice/toolbox/greet", {"name": "x", "times": 9})
    assert assert_envelope(too_many, 422, param="times")["code"] == "invalid_payload"
    assert (await subnet.keys.get("sloppy")).credits == 1, "the chute refused it: nothing charged"
    assert_envelope(await call(subnet, key, "/chutes/alice/toolbox/greet", content=b"{not json",
                               headers={"content-type": "application/json"}), 400)


async def test_unknown_chutes_and_paths_are_404_naming_them(subnet):
    missing = assert_envelope(await call(subnet, subnet.alice, "/chutes/alice/nothing/greet", {}), 404)
    assert missing["code"] == "not_found" and "alice/nothing" in missing["message"]
    no_cord = assert_envelope(await call(subnet, subnet.alice, "/chutes/alice/toolbox/nope", {}), 404)
    assert "/nope" in no_cord["message"] and "/count, /greet, /health, /lines, /pixel" in no_cord["message"]
    wrong_method = await call(subnet, subnet.alice, "/chutes/alice/toolbox/greet", method="GET")
    assert assert_envelope(wrong_method, 405)["code"] == "method_not_allowed"
    assert_envelope(await call(subnet, None, "/chutes/alice/toolbox/greet", {"name": "x"}), 401)


async def test_a_private_chute_answers_its_owners_keys_only(subnet):
    carol = await new_key(subnet, "carol", owner="carol")
    ownerless = await new_key(subnet, "nobody")
    for key in (carol, ownerless):
        error = assert_envelope(await call(subnet, key, "/chutes/alice/diary/read", {}), 403)
        assert "private" in error["message"] and "alice" in error["message"]
    mine = await call(subnet, subnet.alice, "/chutes/alice/diary/read", {})
    assert mine.status_code == 200 and mine.json() == {"entry": "dear diary"}


async def test_streams_are_relayed_as_they_arrive_in_their_content_type(subnet):
    async with httpx.AsyncClient(base_url=subnet.url, timeout=30) as client:
        started, arrivals, body = time.perf_counter(), [], b""
        async with client.stream("POST", "/chutes/alice/toolbox/count", json={"to": 3, "pause": 0.4},
                                 headers={"authorization": f"Bearer {subnet.alice}"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for piece in response.aiter_bytes():
                arrivals.append(time.perf_counter() - started)
                body += piece
    events = [json.loads(line[5:]) for line in body.decode().split("\n\n") if line.startswith("data:")]
    assert events == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert arrivals[0] < arrivals[-1] - 0.6, f"the first event came before the last, not all at once: {arrivals}"

    lines = await call(subnet, subnet.alice, "/chutes/alice/toolbox/lines", {"text": "x y z"})
    assert lines.status_code == 200 and lines.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in lines.text.splitlines()] == [{"word": "x"}, {"word": "y"}, {"word": "z"}]


async def test_binary_answers_and_get_cords(subnet):
    pixel = await call(subnet, subnet.alice, "/chutes/alice/toolbox/pixel", {})
    assert pixel.status_code == 200 and pixel.headers["content-type"] == "image/png"
    assert pixel.content == PIXEL
    health = await call(subnet, subnet.alice, "/chutes/alice/toolbox/health", method="GET", params={"probe": "1"})
    assert health.status_code == 200 and health.json() == {"ok": True, "query": {"probe": "1"}}


async def test_a_retried_call_is_replayed(subnet):
    headers = {"idempotency-key": "greet-once"}
    first = await call(subnet, subnet.alice, "/chutes/alice/toolbox/greet", {"name": "bo"}, headers=headers)
    credits = (await subnet.keys.get("alice")).credits
    again = await call(subnet, subnet.alice, "/chutes/alice/toolbox/greet", {"name": "bo"}, headers=headers)
    assert again.status_code == 200 and again.json() == first.json() == {"greeting": "hello bo"}
    assert again.headers["x-canopy-idempotent-replay"] == "true"
    assert (await subnet.keys.get("alice")).credits == credits, "a replay costs nothing"


async def test_a_chute_nobody_hosts_waits_then_503_and_records_the_demand(subnet):
    revision, data = bundle_of("cold chute")
    await subnet.registry.put_revision("alice", "cold", revision, data, description("alice", "cold"), public=True,
                                       max_instances=1, shutdown_after_seconds=60)
    since = time.time() - 1
    credits = (await subnet.keys.get("alice")).credits
    started = time.perf_counter()
    response = await call(subnet, subnet.alice, "/chutes/alice/cold/echo", {"hi": 1})
    waited = time.perf_counter() - started
    error = assert_envelope(response, 503)
    assert error["code"] == "no_capacity" and "alice/cold" in error["message"]
    assert response.headers["retry-after"].isdigit() and 1.0 <= waited < 4.0
    assert (await subnet.registry.demand_since(since))[chute_id("alice", "cold")].refused == 1
    assert (await subnet.keys.get("alice")).credits == credits


async def test_a_chutes_own_host_serves_its_paths(subnet):
    greeted = await call(subnet, subnet.alice, "/greet", {"name": "host"}, headers={"host": "Alice-Toolbox.chutes.test:8080"})
    assert greeted.status_code == 200, greeted.text
    assert greeted.json() == {"greeting": "hello host"}
    unknown = assert_envelope(await call(subnet, subnet.alice, "/greet", {}, headers={"host": "bob-nothing.chutes.test"}),
                              404)
    assert "bob-nothing.chutes.test" in unknown["message"]
    plain = await call(subnet, None, "/health", method="GET", headers={"host": "api.example.org"})
    assert plain.status_code == 200 and plain.json()["status"] == "ok", "other hosts are the gateway"


async def test_a_miner_at_another_revision_gets_no_traffic(subnet):
    assert {r.uid for r in subnet.directory.routes if r.chute.chute_id == TOOLBOX_ID} == {1}
    before = len(await invocations(subnet))
    for n in range(4):
        response = await call(subnet, subnet.alice, "/chutes/alice/toolbox/greet", {"name": f"n{n}"})
        assert response.status_code == 200 and response.headers["x-canopy-miner-uid"] == "1"
    rows = (await invocations(subnet))[before:]
    assert len(rows) == 4 and {row.miner_hotkey for row in rows} == {subnet.hotkeys[0]}, \
        "uid 2 scores higher but runs a revision the registry does not name"
