"""``canopy deploy`` and ``canopy chutes list|get|delete`` / ``canopy warmup`` against a real HTTP server.

The server (aiohttp, in a thread, on a free port) follows the REST contract of the API's chute
routes minimally and records every request; the commands run as real ``canopy`` processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from canopy.bundle import build_bundle
from canopy.chute import chute_id
from tests.support import ROOT, free_port

KEY = "sk-test-deploy-key-0123456789"
CHUTE = '''
from canopy import Chute

chute = Chute(username="alice", name="demo", image="python:3.11-slim", tagline="a demo")


@chute.cord(public_api_path="/echo")
async def echo(data: dict) -> dict:
    return data
'''


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeApi:
    """The API's chute routes, as the contract states them, over a dict; ``seen`` records requests."""

    url: str = ""
    owner: str = "alice"
    name: str = "demo"
    chutes: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    fail: tuple[int, dict[str, Any]] | None = None  # the next POST /chutes answers this
    polls_until_ready: int | None = 0  # GETs of a chute before it counts an instance; None: never

    def chute_out(self, owner: str, name: str, revision: str, query: dict[str, str], created: bool) -> dict[str, Any]:
        return {"chute_id": chute_id(owner, name), "owner": owner, "name": name, "revision": revision,
                "public": query.get("public", "true") == "true", "max_instances": int(query.get("max_instances", 5)),
                "shutdown_after_seconds": int(query.get("shutdown_after_seconds", 300)), "tagline": "a demo",
                "model": None, "created": created, "instances": 0,
                "cords": [{"path": "/echo", "method": "POST", "public_api_path": "/echo", "public_api_method": "POST",
                           "stream": False, "output_content_type": "application/json"}],
                "urls": [f"{self.url}/chutes/{owner}/{name}/echo"]}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024, middlewares=[self.record])
        app.router.add_post("/chutes", self.deploy)
        app.router.add_get("/chutes", self.list)
        app.router.add_post("/chutes/{owner}/{name:.+}/_canopy/warmup", self.warmup)
        app.router.add_get("/chutes/{owner}/{name:.+}", self.get)
        app.router.add_delete("/chutes/{owner}/{name:.+}", self.delete)
        return app

    @web.middleware
    async def record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path, dict(request.query), dict(request.headers), body))
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return error(401, "authentication_error", "invalid API key")
        return await handler(request)

    def find(self, request: web.Request) -> dict[str, Any]:
        owner, name = request.match_info["owner"], request.match_info["name"]
        if (owner, name) not in self.chutes:
            raise web.HTTPNotFound(text=json.dumps({"error": {"type": "invalid_request_error", "code": "not_found",
                                                              "message": f"no chute {owner}/{name}"}}),
                                   content_type="application/json")
        return self.chutes[owner, name]

    async def deploy(self, request: web.Request) -> web.Response:
        if self.fail is not None:
            status, body = self.fail
            return web.json_response(body, status=status)
        data = await request.read()
        revision = hashlib.sha256(data).hexdigest()
        if request.headers.get("X-Canopy-Revision", revision) != revision:
            return error(400, "invalid_request_error", "X-Canopy-Revision does not match the body")
        created = (self.owner, self.name) not in self.chutes
        chute = self.chute_out(self.owner, self.name, revision, dict(request.query), created)
        self.chutes[self.owner, self.name] = chute
        return web.json_response(chute, status=201 if created else 200)

    async def list(self, request: web.Request) -> web.Response:
        return web.json_response({"chutes": [{k: v for k, v in c.items() if k != "revisions"}
                                             for c in self.chutes.values()]})

    async def get(self, request: web.Request) -> web.Response:
        chute = self.find(request)
        gets = sum(1 for s in self.seen if s.method == "GET" and s.path == request.path)
        ready = self.polls_until_ready is not None and gets >= self.polls_until_ready
        chute["instances"] = 1 if ready else 0
        revisions = [{"revision": chute["revision"], "size": 1234, "created_at": "2025-01-01T00:00:00Z"}]
        return web.json_response({**chute, "revisions": revisions})

    async def delete(self, request: web.Request) -> web.Response:
        chute = self.find(request)
        del self.chutes[chute["owner"], chute["name"]]
        return web.json_response({"deleted": True, "chute_id": chute["chute_id"]})

    async def warmup(self, request: web.Request) -> web.Response:
        chute = self.find(request)
        return web.json_response({"chute_id": chute["chute_id"], "revision": chute["revision"], "instances": 0},
                                 status=202)

    def requests(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]


def error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message, "param": None, "code": None}}, status=status)


@pytest.fixture()
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi()
    port = free_port()
    api.url = f"http://127.0.0.1:{port}"
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(api.app())
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    yield api
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    (tmp_path / "my_chute.py").write_text(CHUTE)
    (tmp_path / "weights.bin").write_bytes(os.urandom(300_000))  # several upload chunks, incompressible
    return tmp_path


def canopy(*args: str, api: FakeApi | None = None, cwd: Path = ROOT, key: str | None = KEY,
           stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run the ``canopy`` CLI in a fresh interpreter; the API's URL and key come from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANOPY_API")}
    env.update(COLUMNS="200", PYTHONPATH=str(ROOT))
    if api is not None:
        env["CANOPY_API_URL"] = api.url
    if key is not None:
        env["CANOPY_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "canopy.cli.main", *args], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True, timeout=60)


def _text(output: str) -> str:
    return re.sub(r"\s+", " ", output)


def test_deploy_uploads_the_bundle_with_its_revision_and_prints_the_urls(fake_api: FakeApi, project: Path) -> None:
    done = canopy("deploy", "my_chute.py:chute", "--private", "--max-instances", "3", "--shutdown-after", "120",
                  api=fake_api, cwd=project)
    assert done.returncode == 0, done.stderr
    bundle = build_bundle(str(project / "my_chute.py:chute"))
    [upload] = fake_api.requests("POST", "/chutes")
    assert upload.body == bundle.data and len(upload.body) > 4 * 64 * 1024
    assert upload.headers["X-Canopy-Revision"] == bundle.revision
    assert upload.headers["Content-Type"] == "application/gzip"
    assert int(upload.headers["Content-Length"]) == bundle.size and "Transfer-Encoding" not in upload.headers
    assert upload.query == {"public": "false", "max_instances": "3", "shutdown_after_seconds": "120"}
    out = _text(done.stdout)
    assert chute_id("alice", "demo") in out and bundle.revision in out and "new chute" in out
    assert f"{fake_api.url}/chutes/alice/demo/echo" in out
    assert "uploaded" in done.stderr and KEY not in done.stdout + done.stderr

    again = canopy("deploy", "my_chute.py:chute", "--json", api=fake_api, cwd=project)
    assert again.returncode == 0, again.stderr
    assert fake_api.requests("POST", "/chutes")[-1].query == {"public": "true"}  # limits left to the API
    answer = json.loads(again.stdout)
    assert answer == fake_api.chutes["alice", "demo"] and answer["created"] is False


def test_a_module_reference_bundles_the_working_directory(fake_api: FakeApi, project: Path) -> None:
    done = canopy("deploy", "my_chute:chute", "--json", api=fake_api, cwd=project)
    assert done.returncode == 0, done.stderr
    [upload] = fake_api.requests("POST", "/chutes")
    assert upload.body == build_bundle("my_chute:chute", root=project).data


def test_api_errors_are_printed_with_their_message_and_exit_1(fake_api: FakeApi, project: Path) -> None:
    trace = [f"  line {n}" for n in range(20)] + ["  File \"my_chute.py\", line 2", "    import nope"]
    fake_api.fail = (422, {"error": {"type": "invalid_request_error", "code": "invalid_chute", "param": None,
                                     "message": "the chute does not load: No module named 'nope'",
                                     "detail": "\n".join(["Traceback (most recent call last):", *trace])}})
    done = canopy("deploy", "my_chute.py:chute", api=fake_api, cwd=project)
    assert done.returncode == 1
    assert "422 invalid_chute: the chute does not load: No module named 'nope'" in done.stderr
    assert done.stderr.rstrip().endswith('File "my_chute.py", line 2\n    import nope')  # the traceback's last lines
    assert "line 9\n" not in done.stderr  # not all of them

    fake_api.fail = (502, {"unexpected": "shape"})
    odd = canopy("deploy", "my_chute.py:chute", api=fake_api, cwd=project)
    assert odd.returncode == 1 and 'the API answered 502: {"unexpected": "shape"}' in odd.stderr

    wrong_key = canopy("deploy", "my_chute.py:chute", "--key", "sk-wrong-secret", api=fake_api, cwd=project)
    assert wrong_key.returncode == 1
    assert "401 authentication_error: invalid API key" in wrong_key.stderr and "CANOPY_API_KEY" in wrong_key.stderr
    assert "sk-wrong-secret" not in wrong_key.stdout + wrong_key.stderr


def test_a_missing_key_or_bundle_or_api_says_what_to_do(fake_api: FakeApi, project: Path) -> None:
    no_key = canopy("deploy", "my_chute.py:chute", api=fake_api, cwd=project, key=None)
    assert no_key.returncode == 2
    assert "set CANOPY_API_KEY or pass --key" in _text(no_key.stderr) and "canopy keys create" in no_key.stderr

    no_file = canopy("deploy", "missing.py:chute", api=fake_api, cwd=project)
    assert no_file.returncode == 1
    assert "cannot bundle 'missing.py:chute'" in no_file.stderr and "does not exist" in no_file.stderr
    assert len(no_file.stderr.strip().splitlines()) == 1
    assert not fake_api.seen

    nobody = f"http://127.0.0.1:{free_port()}"
    refused = canopy("deploy", "my_chute.py:chute", "--api", nobody, api=fake_api, cwd=project)
    assert refused.returncode == 1
    assert f"cannot reach the API at {nobody}" in refused.stderr and "CANOPY_API_URL" in refused.stderr
    assert "--api" in refused.stderr


def test_wait_polls_until_an_instance_runs(fake_api: FakeApi, project: Path) -> None:
    fake_api.polls_until_ready = 3
    done = canopy("deploy", "my_chute.py:chute", "--wait", "--poll-interval", "0.1", api=fake_api, cwd=project)
    assert done.returncode == 0, done.stderr
    assert len(fake_api.requests("GET", "/chutes/alice/demo")) == 3
    assert "ready" in done.stderr

    fake_api.polls_until_ready = None
    late = canopy("deploy", "my_chute.py:chute", "--wait", "--wait-timeout", "1", "--poll-interval", "0.2",
                  api=fake_api, cwd=project)
    assert late.returncode == 1
    assert "no miner picked up alice/demo" in late.stderr and "canopy warmup alice/demo" in late.stderr
    assert len(fake_api.requests("GET", "/chutes/alice/demo")) >= 3 + 3


def _seed(api: FakeApi) -> None:
    for owner, name, public in (("alice", "demo", False), ("bob", "demo", True), ("bob", "other", True)):
        api.chutes[owner, name] = api.chute_out(owner, name, hashlib.sha256(name.encode()).hexdigest(),
                                                {"public": str(public).lower()}, created=True)


def test_chutes_list_and_get(fake_api: FakeApi) -> None:
    _seed(fake_api)
    listed = canopy("chutes", "list", api=fake_api)
    assert listed.returncode == 0, listed.stderr
    assert all(ref in listed.stdout for ref in ("alice/demo", "bob/demo", "bob/other"))
    as_json = canopy("chutes", "list", "--json", api=fake_api)
    assert json.loads(as_json.stdout)["chutes"] == list(fake_api.chutes.values())

    got = canopy("chutes", "get", "other", api=fake_api)  # a bare name only one chute has
    assert got.returncode == 0, got.stderr
    assert fake_api.requests("GET", "/chutes/bob/other")
    assert chute_id("bob", "other") in _text(got.stdout) and "(current)" in got.stdout
    exact = canopy("chutes", "get", "alice/demo", "--json", api=fake_api)
    assert json.loads(exact.stdout)["chute_id"] == chute_id("alice", "demo")

    ambiguous = canopy("chutes", "get", "demo", api=fake_api)
    assert ambiguous.returncode == 2 and "alice/demo, bob/demo" in ambiguous.stderr
    unknown = canopy("chutes", "get", "carol/secret", api=fake_api)  # not listed: the API answers for it
    assert unknown.returncode == 1 and "404 not_found: no chute carol/secret" in unknown.stderr
    assert fake_api.requests("GET", "/chutes/carol/secret")
    nothing = canopy("chutes", "get", "nope", api=fake_api)
    assert nothing.returncode == 1 and "canopy chutes list" in nothing.stderr


def test_chutes_delete_and_warmup(fake_api: FakeApi) -> None:
    _seed(fake_api)
    kept = canopy("chutes", "delete", "other", api=fake_api, stdin="n\n")
    assert kept.returncode == 1 and not fake_api.requests("DELETE", "/chutes/bob/other")
    deleted = canopy("chutes", "delete", "alice/demo", "--yes", api=fake_api)
    assert deleted.returncode == 0, deleted.stderr
    assert fake_api.requests("DELETE", "/chutes/alice/demo") and ("alice", "demo") not in fake_api.chutes
    assert "deleted alice/demo" in deleted.stdout

    warm = canopy("warmup", "demo", "--json", api=fake_api)  # alice/demo is gone: bob/demo is the only one now
    assert warm.returncode == 0, warm.stderr
    [asked] = fake_api.requests("POST", "/chutes/bob/demo/_canopy/warmup")
    assert asked.headers["Authorization"] == f"Bearer {KEY}"
    assert json.loads(warm.stdout) == {"chute_id": chute_id("bob", "demo"), "revision": fake_api.chutes["bob", "demo"]
                                       ["revision"], "instances": 0}
