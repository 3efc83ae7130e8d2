"""Admin REST (``/admin/keys``, ``/admin/logs``, ``/admin/stats``) over real HTTP against the gateway."""

from __future__ import annotations

import httpx
import pytest

from tests.support.gateway import assert_envelope, chat, new_key, post

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def admin(gateway, method: str, path: str, key: str | None, headers=None, **kwargs) -> httpx.Response:
    sent = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        return await client.request(method, path, headers={**sent, **(headers or {})}, **kwargs)


async def test_admin_routes_need_an_admin_key(gateway):
    plain = await new_key(gateway, "adm-plain")
    for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"), ("PATCH", "/admin/keys/x"),
                         ("DELETE", "/admin/keys/x"), ("GET", "/admin/logs"), ("GET", "/admin/stats")):
        assert_envelope(await admin(gateway, method, path, None), 401)
        assert_envelope(await admin(gateway, method, path, "cnp_nope"), 401)
        assert_envelope(await admin(gateway, method, path, plain), 403, type_="permission_error")


async def test_keys_create_list_edit_delete(gateway):
    root = await new_key(gateway, "adm-root", admin=True)
    created = await admin(gateway, "POST", "/admin/keys", root, json={
        "name": "adm-client", "credits": 3, "expires": "in 30 days", "rate_limits": ["10/60s"],
        "default_strategy": "top_n:2", "models": ["fake-model"]})
    assert created.status_code == 201, created.text
    body = created.json()
    client_key = body["key"]
    assert client_key.startswith("cnp_") and body["credits"] == 3 and body["rate_limits"] == ["10/60s"]
    assert body["hint"].endswith(client_key[-4:]) and body["expires_at"] > 0
    listed = (await admin(gateway, "GET", "/admin/keys", root)).json()["data"]
    assert "adm-client" in [key["name"] for key in listed] and client_key not in str(listed)
    assert (await post(gateway, client_key, chat())).status_code == 200  # the new key works

    patched = await admin(gateway, "PATCH", "/admin/keys/adm-client", root, json={"add_credits": 5})
    assert patched.status_code == 200 and patched.json()["credits"] == 7  # 3 - 1 + 5
    patched = (await admin(gateway, "PATCH", "/admin/keys/adm-client", root, json={
        "credits": None, "expires": None, "rate_limits": ["5/m", "100/1h"], "models": None,
        "default_strategy": None})).json()
    assert patched["credits"] is None and patched["expires_at"] is None and patched["models"] is None
    assert patched["rate_limits"] == ["5/60s", "100/3600s"] and patched["default_strategy"] is None
    disabled = await admin(gateway, "PATCH", "/admin/keys/adm-client", root, json={"disabled": True})
    assert disabled.json()["disabled"] is True
    assert_envelope(await post(gateway, client_key, chat()), 401)
    await admin(gateway, "PATCH", "/admin/keys/adm-client", root, json={"disabled": False})
    assert (await post(gateway, client_key, chat())).status_code == 200
    assert (await admin(gateway, "GET", "/admin/keys/adm-client", root)).json()["name"] == "adm-client"

    deleted = await admin(gateway, "DELETE", "/admin/keys/adm-client", root)
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert_envelope(await admin(gateway, "DELETE", "/admin/keys/adm-client", root), 404, param="name")
    assert_envelope(await admin(gateway, "PATCH", "/admin/keys/adm-client", root, json={"credits": 1}), 404,
                    param="name")
    assert_envelope(await post(gateway, client_key, chat()), 401)


async def test_bad_admin_input_is_400_with_param(gateway):
    root = await new_key(gateway, "adm-bad", admin=True)
    cases = [({"name": "bad name!"}, "name"), ({"name": "ok1", "credits": -1}, "credits"),
             ({"name": "ok2", "credits": "many"}, "credits"), ({"name": "ok3", "rate_limits": ["lots"]}, "rate_limits"),
             ({"name": "ok4", "expires": "someday"}, "expires"), ({"name": "ok5", "default_strategy": "best"},
                                                                  "default_strategy"),
             ({"name": "ok6", "colour": "red"}, "colour"), ({}, "name")]
    for body, param in cases:
        assert_envelope(await admin(gateway, "POST", "/admin/keys", root, json=body), 400, param=param)
    assert_envelope(await admin(gateway, "POST", "/admin/keys", root, content=b"{nope",
                                headers={"content-type": "application/json"}), 400)
    assert_envelope(await admin(gateway, "POST", "/admin/keys", root, json={"name": "adm-bad"}), 409, param="name")
    assert_envelope(await admin(gateway, "PATCH", "/admin/keys/adm-bad", root, json={"disabled": "yes"}), 400,
                    param="disabled")
    assert_envelope(await admin(gateway, "PATCH", "/admin/keys/adm-bad", root, json={"credits": 1, "add_credits": 1}),
                    400, param="add_credits")
    for query, param in (("limit=0", "limit"), ("limit=abc", "limit"), ("status=9", "status"),
                         ("since=yesterday", "since"), ("key=nobody", "key")):
        expected = 404 if param == "key" else 400
        assert_envelope(await admin(gateway, "GET", f"/admin/logs?{query}", root), expected, param=param)
    assert_envelope(await admin(gateway, "GET", "/admin/stats?since=soon", root), 400, param="since")


async def test_logs_filter_newest_first_and_stats(gateway):
    root = await new_key(gateway, "adm-logs", admin=True)
    user = await new_key(gateway, "adm-user", credits=10)
    ids = []
    for seed in (1, 2):
        answer = await post(gateway, user, chat(seed=seed))
        assert answer.status_code == 200
        ids.append(answer.headers["x-request-id"])
    bad = await post(gateway, user, chat(model="no-such-model"))
    assert bad.status_code == 404
    await gateway.app.state.request_log.drain()

    rows = (await admin(gateway, "GET", "/admin/logs?key=adm-user&limit=10", root)).json()["data"]
    assert [row["id"] for row in rows] == [bad.headers["x-request-id"], *reversed(ids)]
    assert rows[1]["status"] == 200 and rows[1]["completion_tokens"] > 0 and rows[1]["uid"] in (1, 2)
    only_ok = (await admin(gateway, "GET", "/admin/logs?key=adm-user&status=200&since=1h", root)).json()["data"]
    assert [row["id"] for row in only_ok] == list(reversed(ids))
    assert len((await admin(gateway, "GET", "/admin/logs?key=adm-user&limit=1", root)).json()["data"]) == 1
    assert (await admin(gateway, "GET", "/admin/logs?key=adm-user&since=2000-01-01T00:00:00Z&until=2000-01-02",
                        root)).json()["data"] == []

    stats = (await admin(gateway, "GET", "/admin/stats?key=adm-user&since=1h", root)).json()
    assert stats["requests"] == 3 and stats["errors"] == 1 and stats["by_status"] == {"200": 2, "404": 1}
    assert stats["completion_tokens"] > 0 and stats["total_tokens"] >= stats["completion_tokens"]
    assert stats["charged"] == 2
    overall = (await admin(gateway, "GET", "/admin/stats", root)).json()
    assert overall["requests"] >= 3 and overall["since"] is not None


async def test_keys_carry_owner_scopes_and_chutes(gateway):
    root = await new_key(gateway, "adm-scopes-root", admin=True)
    created = await admin(gateway, "POST", "/admin/keys", root, json={
        "name": "adm-deployer", "owner": "alice", "scopes": ["deploy", "invoke"], "chutes": ["alice/llm"]})
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["owner"], body["scopes"], body["chutes"], body["admin"]) == ("alice", ["invoke", "deploy"],
                                                                              ["alice/llm"], False)
    got = (await admin(gateway, "GET", "/admin/keys/adm-deployer", root)).json()
    assert (got["owner"], got["scopes"], got["chutes"]) == ("alice", ["invoke", "deploy"], ["alice/llm"])
    listed = {key["name"]: key for key in (await admin(gateway, "GET", "/admin/keys", root)).json()["data"]}
    assert listed["adm-deployer"]["scopes"] == ["invoke", "deploy"]
    assert listed["adm-scopes-root"]["scopes"] == ["invoke", "admin"] and listed["adm-scopes-root"]["owner"] is None
    assert_envelope(await admin(gateway, "GET", "/admin/keys", body["key"]), 403, type_="permission_error")

    patched = (await admin(gateway, "PATCH", "/admin/keys/adm-deployer", root, json={
        "owner": None, "chutes": None, "scopes": ["invoke", "admin"]})).json()
    assert (patched["owner"], patched["chutes"], patched["scopes"], patched["admin"]) == (
        None, None, ["invoke", "admin"], True)
    assert (await admin(gateway, "GET", "/admin/keys", body["key"])).status_code == 200  # now an admin key
    demoted = (await admin(gateway, "PATCH", "/admin/keys/adm-deployer", root, json={"admin": False})).json()
    assert demoted["scopes"] == ["invoke"] and demoted["admin"] is False
    assert "scopes" in (await admin(gateway, "GET", "/openapi.json", None)).text


async def test_bad_owner_scopes_and_chutes_are_400_with_nothing_stored(gateway):
    root = await new_key(gateway, "adm-scopes-bad", admin=True)
    cases = [({"scopes": ["root"]}, "scopes"), ({"scopes": "invoke"}, "scopes"), ({"owner": "bad owner"}, "owner"),
             ({"chutes": ["no-slash"]}, "chutes"), ({"chutes": ["a/"]}, "chutes"),
             ({"scopes": ["admin"], "admin": False}, "scopes")]
    for fields, param in cases:
        assert_envelope(await admin(gateway, "POST", "/admin/keys", root, json={"name": "adm-nope", **fields}), 400,
                        param=param)
        assert_envelope(await admin(gateway, "PATCH", "/admin/keys/adm-scopes-bad", root, json=fields), 400,
                        param=param)
    assert_envelope(await admin(gateway, "GET", "/admin/keys/adm-nope", root), 404, param="name")
    kept = (await admin(gateway, "GET", "/admin/keys/adm-scopes-bad", root)).json()
    assert (kept["owner"], kept["scopes"], kept["chutes"]) == (None, ["invoke", "admin"], None)


async def test_an_old_style_admin_key_still_passes_the_admin_routes(gateway):
    from sqlalchemy import update

    from store.api_tables import ApiKey

    old = await new_key(gateway, "adm-old")
    async with gateway.keys.sessions.begin() as session:  # the admin flag only, scopes at 0005's default
        await session.execute(update(ApiKey).where(ApiKey.name == "adm-old").values(admin=True, scopes='["invoke"]'))
    gateway.keys._cache.clear()
    answer = await admin(gateway, "GET", "/admin/keys/adm-old", old)
    assert answer.status_code == 200 and answer.json()["admin"] is True
    assert answer.json()["scopes"] == ["invoke", "admin"]
