"""``/chutes``: deploying bundles (inspected in a real child process), listing, reading, deleting
and warming up chutes, over real HTTP against a gateway with a real SQLite registry (no miners)."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from api.chute_routes import selector_problem
from canopy.bundle import MAX_BUNDLE_BYTES, build_bundle
from canopy.chute import chute_id
from canopy.node_selector import NodeSelector
from tests.support.gateway import assert_envelope, log_row, new_key, serve_gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHUTE = '''
from canopy.chute import Chute

chute = Chute(username="someone-else", name="{name}", tagline="echoes", node_selector={selector}, max_instances=3)


@chute.cord(public_api_path="/echo")
async def echo(self, body: dict) -> dict:
    return {{"echo": body, "version": {version!r}}}
'''
CPU = {"gpu_count": 1, "min_vram_gb_per_gpu": 0}


def chute_file(folder: Path, name: str = "echoer", *, version: str = "v1", selector=None, prelude: str = "") -> str:
    """A chute file in its own folder; its ref (``path/to/file.py:chute``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "app.py"
    path.write_text(prelude + CHUTE.format(name=name, version=version, selector=selector or CPU))
    return f"{path}:chute"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(tmp_path_factory):
    async with serve_gateway(tmp_path_factory.mktemp("chute-routes"), [], verified={}, scores=[]) as running:
        running.bob = await new_key(running, "bob", owner="bob", scopes=["invoke", "deploy"])
        running.carol = await new_key(running, "carol", owner="carol", scopes=["invoke", "deploy"])
        running.admin = await new_key(running, "root", scopes=["invoke", "admin"])
        yield running


async def send(api, method: str, path: str, key: str | None = None, **kwargs) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=api.url, timeout=90) as client:
        return await client.request(method, path, headers={**headers, **kwargs.pop("headers", {})}, **kwargs)


async def upload(api, key: str | None, data: bytes, *, revision: str | None = None, **params) -> httpx.Response:
    headers = {"content-type": "application/gzip", "x-canopy-revision": revision or hashlib.sha256(data).hexdigest()}
    return await send(api, "POST", "/chutes", key, content=data, headers=headers,
                      params={k: str(v).lower() for k, v in params.items()})


async def test_a_deploy_creates_then_adds_revisions_as_the_key_owner(api, tmp_path):
    since = time.time() - 1
    first = build_bundle(chute_file(tmp_path / "echoer"))
    created = await upload(api, api.bob, first.data, public="true", shutdown_after_seconds=120)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["owner"] == "bob" and body["name"] == "echoer", "deployed as the key's owner, not the code's username"
    assert body["chute_id"] == chute_id("bob", "echoer") and body["revision"] == first.revision
    assert (body["public"], body["max_instances"], body["shutdown_after_seconds"]) == (True, 3, 120)
    assert body["tagline"] == "echoes" and body["model"] == "" and body["created"] is True and body["instances"] == 0
    assert body["cords"] == [{"path": "/echo", "method": "POST", "public_api_path": "/echo", "public_api_method": "POST",
                              "stream": False, "output_content_type": "application/json"}]
    assert body["urls"] == [f"{api.url}/chutes/bob/echoer/echo"]
    stored = await api.registry.get("bob", "echoer")
    assert stored.revision == first.revision and stored.description["username"] == "bob"
    assert await api.registry.bundle(first.revision) == first.data
    row = await log_row(api, created.headers["x-request-id"])
    assert (row.route, row.status, row.model, row.charged) == ("/chutes", 201, "bob/echoer", 0)

    again = await upload(api, api.bob, first.data, max_instances=2)
    assert again.status_code == 200, again.text
    assert (again.json()["created"], again.json()["revision"], again.json()["max_instances"]) == (False, first.revision, 2)

    second = build_bundle(chute_file(tmp_path / "echoer", version="v2"))
    changed = await upload(api, api.bob, second.data)
    assert changed.status_code == 200 and changed.json()["revision"] == second.revision != first.revision
    assert api.directory.chute("bob", "echoer").revision == second.revision, "the directory knows at once"
    detail = await send(api, "GET", "/chutes/bob/echoer", api.carol)
    assert detail.status_code == 200, detail.text
    assert [r["revision"] for r in detail.json()["revisions"]] == [second.revision, first.revision]
    assert detail.json()["revisions"][0]["size"] == len(second.data)
    demand = (await api.registry.demand_since(since))[chute_id("bob", "echoer")]
    assert demand.warmups == 3, "each deploy asks the network for an instance"


async def test_the_image_environment_and_egress_are_stored_and_shown(api, tmp_path):
    prelude = ("from canopy.image import Image\n"
               "IMAGE = Image('bob', 'imaged', '1').pip_install('cowsay==6.1').apt_install(['git'])\n")
    ref = chute_file(tmp_path / "imaged", "imaged", prelude=prelude)
    path = Path(ref.rsplit(":", 1)[0])
    path.write_text(path.read_text().replace('max_instances=3)', 'max_instances=3, image=IMAGE, allow_external_egress=True)'))
    deployed = await upload(api, api.bob, build_bundle(ref).data)
    assert deployed.status_code == 201, deployed.text
    body = deployed.json()
    assert body["environment"]["pip"] == ["cowsay==6.1"] and body["environment"]["unsupported"] == ["apt_install('git')"]
    assert body["allow_external_egress"] is True
    stored = (await api.registry.get("bob", "imaged")).description
    assert stored["environment"]["pip"] == ["cowsay==6.1"] and "apt-get install" in stored["dockerfile"], \
        "what the miners are announced: the environment, and the Dockerfile for container runtimes"


async def test_the_bundle_limit_replaces_the_body_cap_on_uploads_only(api, tmp_path):
    garbage = os.urandom(200 * 1024)  # over the gateway's 64 KiB test cap, under the bundle limit
    refused = await upload(api, api.bob, garbage)
    error = assert_envelope(refused, 422)
    assert error["code"] == "invalid_chute" and "bundle" in error["message"]
    too_big = await upload(api, api.bob, b"\0" * (MAX_BUNDLE_BYTES + 1))
    assert assert_envelope(too_big, 413)["code"] == "payload_too_large"

    async def chunks():  # no Content-Length: the route counts
        for _ in range(MAX_BUNDLE_BYTES // (1 << 20) + 1):
            yield b"\0" * (1 << 20)

    streamed = await send(api, "POST", "/chutes", api.bob, content=chunks(), headers={"content-type": "application/gzip"})
    assert assert_envelope(streamed, 413)["code"] == "payload_too_large"
    big_call = await send(api, "POST", "/chutes/bob/echoer/echo", api.bob, content=b"{}" + b" " * (100 * 1024),
                          headers={"content-type": "application/json"})
    assert big_call.status_code == 413, "a public call keeps the gateway's cap"


async def test_a_revision_header_that_is_not_the_body_sha256_is_refused(api, tmp_path):
    bundle = build_bundle(chute_file(tmp_path / "header"))
    response = await upload(api, api.bob, bundle.data, revision="0" * 64)
    error = assert_envelope(response, 400, param="x-canopy-revision")
    assert error["code"] == "revision_mismatch" and bundle.revision in error["message"]


async def test_a_chute_that_does_not_import_is_422_with_the_error(api, tmp_path):
    bundle = build_bundle(chute_file(tmp_path / "broken", name="broken", prelude="import no_such_module_here\n"))
    response = await upload(api, api.bob, bundle.data)
    error = assert_envelope(response, 422)
    assert error["code"] == "invalid_chute" and "no_such_module_here" in error["message"]
    assert "no_such_module_here" in response.json()["error"]["detail"], "the traceback's last lines"
    assert await api.registry.get("bob", "broken") is None


SNOOP = '''
import os, socket
from canopy.chute import Chute


def _peek(path):
    try:
        with open(path) as handle:
            return "READ " + handle.read(200)
    except OSError as error:
        return "refused " + type(error).__name__


def _dial(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return "CONNECTED"
    except OSError as error:
        return "refused " + type(error).__name__


SEEN = " | ".join([_peek({secret!r}), os.environ.get("CANOPY_TEST_API_SECRET", "no secret"), _dial({port})])
chute = Chute(username="x", name="snoop", tagline=SEEN[:200], node_selector={{"gpu_count": 1, "min_vram_gb_per_gpu": 0}})


@chute.cord(public_api_path="/echo")
async def echo(self, body: dict) -> dict:
    return body
'''


@pytest.mark.skipif(shutil.which("bwrap") is None and not os.environ.get("CANOPY_REQUIRE_BWRAP"),
                    reason="bubblewrap is installed by ./run.sh test")
async def test_an_uploaded_chute_is_imported_in_the_sandbox(api, tmp_path, monkeypatch):
    """Importing the uploaded code is running it: in the node's sandbox it reads no file of the
    API's host, no secret of its environment, and reaches none of its ports (here: the API's own)."""
    secret = tmp_path / "api-secret.txt"
    secret.write_text("the API's database password")
    monkeypatch.setenv("CANOPY_TEST_API_SECRET", "an env secret")
    folder = tmp_path / "snoop"
    folder.mkdir()
    (folder / "app.py").write_text(SNOOP.format(secret=str(secret), port=int(api.url.rsplit(":", 1)[1])))
    bundle = build_bundle(f"{folder / 'app.py'}:chute")
    response = await upload(api, api.bob, bundle.data)
    assert response.status_code == 201, response.text
    seen = response.json()["tagline"]
    assert seen.startswith("refused") and "no secret" in seen and seen.endswith(("ConnectionRefusedError", "OSError")), seen
    assert "READ" not in seen and "CONNECTED" not in seen and "password" not in seen


async def test_a_node_selector_no_gpu_of_the_table_fits_is_422(api, tmp_path):
    selector = {"gpu_count": 2, "min_vram_gb_per_gpu": 200, "include": ["h100"]}
    bundle = build_bundle(chute_file(tmp_path / "huge", name="huge", selector=selector))
    error = assert_envelope(await upload(api, api.bob, bundle.data), 422)
    assert error["code"] == "invalid_chute" and "2 x GPU >= 200 GB include h100" in error["message"]
    assert await api.registry.get("bob", "huge") is None


async def test_the_gpu_table_check():
    assert selector_problem(NodeSelector(gpu_count=1, min_vram_gb_per_gpu=0)) == "", "the devnet's CPU device fits"
    assert selector_problem(NodeSelector(include=["cpu"], min_vram_gb_per_gpu=0)) == ""
    assert selector_problem(NodeSelector(include=["A100"], min_vram_gb_per_gpu=80)) == ""
    assert selector_problem(NodeSelector(gpu_count=8, include=["h200"], min_vram_gb_per_gpu=141)) == ""
    assert "include tpu" in selector_problem(NodeSelector(include=["tpu"]))
    assert selector_problem(NodeSelector(min_vram_gb_per_gpu=200)), "the CPU device claims little memory"
    assert selector_problem(NodeSelector(include=["cpu"], min_vram_gb_per_gpu=16))
    assert selector_problem(NodeSelector(exclude=["h100", "h200", "a100", "l40s", "a6000", "rtx", "a10", "l4", "cpu"]))


async def test_who_may_deploy(api, tmp_path):
    bundle = build_bundle(chute_file(tmp_path / "scoped", name="scoped"))
    assert_envelope(await upload(api, None, bundle.data), 401)
    ownerless = await new_key(api, "ownerless", scopes=["invoke", "deploy"])
    error = assert_envelope(await upload(api, ownerless, bundle.data), 403)
    assert "canopy keys edit ownerless --owner NAME" in error["message"]
    invoker = await new_key(api, "invoker", owner="dave")
    assert "deploy scope" in assert_envelope(await upload(api, invoker, bundle.data), 403)["message"]
    narrowed = await new_key(api, "narrowed", owner="dave", scopes=["deploy"], chutes=["dave/other"])
    assert "limited" in assert_envelope(await upload(api, narrowed, bundle.data), 403)["message"]
    assert await api.registry.get("dave", "scoped") is None
    allowed = await new_key(api, "dave", owner="dave", scopes=["deploy"], chutes=["dave/scoped"])
    assert (await upload(api, allowed, bundle.data)).status_code == 201


async def test_list_get_delete_and_warmup(api, tmp_path):
    private = build_bundle(chute_file(tmp_path / "secret", name="secret"))
    public = build_bundle(chute_file(tmp_path / "open", name="open"))
    assert (await upload(api, api.bob, private.data, public="false")).status_code == 201
    assert (await upload(api, api.bob, public.data)).status_code == 201

    def names(response):
        assert response.status_code == 200, response.text
        return {(c["owner"], c["name"]) for c in response.json()["chutes"]}

    assert {("bob", "secret"), ("bob", "open")} <= names(await send(api, "GET", "/chutes", api.bob))
    seen_by_carol = names(await send(api, "GET", "/chutes", api.carol))
    assert ("bob", "open") in seen_by_carol and ("bob", "secret") not in seen_by_carol
    assert ("bob", "secret") in names(await send(api, "GET", "/chutes", api.admin))
    assert "private" in assert_envelope(await send(api, "GET", "/chutes/bob/secret", api.carol), 403)["message"]
    missing = assert_envelope(await send(api, "GET", "/chutes/bob/nothing", api.bob), 404)
    assert missing["code"] == "not_found" and "bob/nothing" in missing["message"]

    warm = await send(api, "POST", "/chutes/bob/open/_canopy/warmup", api.bob)
    assert warm.status_code == 202, warm.text
    assert warm.json() == {"chute_id": chute_id("bob", "open"), "revision": public.revision, "instances": 0}
    assert_envelope(await send(api, "POST", "/chutes/bob/open/_canopy/warmup", api.carol), 403)
    since = time.time() - 60
    assert (await api.registry.demand_since(since))[chute_id("bob", "open")].warmups == 2, "the deploy and the warmup"

    assert "only keys of bob" in assert_envelope(await send(api, "DELETE", "/chutes/bob/open", api.carol), 403)["message"]
    deleted = await send(api, "DELETE", "/chutes/bob/open", api.bob)
    assert deleted.status_code == 200 and deleted.json() == {"deleted": True, "chute_id": chute_id("bob", "open")}
    assert_envelope(await send(api, "GET", "/chutes/bob/open", api.bob), 404)
    assert_envelope(await send(api, "DELETE", "/chutes/bob/open", api.bob), 404)
    assert api.directory.chute("bob", "open") is None
    by_admin = await send(api, "DELETE", "/chutes/bob/secret", api.admin)
    assert by_admin.status_code == 200 and by_admin.json()["deleted"] is True


async def test_the_routes_are_documented(api):
    schema = (await send(api, "GET", "/openapi.json")).json()
    assert {"post"} <= set(schema["paths"]["/chutes"]) and "get" in schema["paths"]["/chutes"]
    deploy = schema["paths"]["/chutes"]["post"]
    assert "gzip" in deploy["requestBody"]["description"] and "application/octet-stream" in deploy["requestBody"]["content"]
    assert {p["name"] for p in deploy["parameters"]} == {"public", "max_instances", "shutdown_after_seconds"}
    assert set(schema["paths"]["/chutes/{owner}/{name}"]) == {"get", "delete"}
    for model in ("ChuteOut", "ChuteDetail", "ChuteList", "Warmup", "Deleted"):
        assert model in schema["components"]["schemas"]
