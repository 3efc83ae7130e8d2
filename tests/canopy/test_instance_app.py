"""The instance app in-process (FastAPI TestClient): validation, errors, OpenAPI, streams, passthrough."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from canopy.chute import Chute, load_chute
from canopy.instance import COMPUTE_HEADER, create_app
from tests.support import free_port


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(load_chute("tests.canopy.chutes.basic:chute"))) as test_client:
        deadline = time.monotonic() + 5
        while test_client.get("/_canopy/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        yield test_client


def test_valid_payload_is_the_first_argument(client: TestClient) -> None:
    response = client.post("/echo", json={"foo": "bar", "times": 2})
    assert response.status_code == 200
    assert response.json() == {"foo": "barbar", "prefix": ">"}  # self.prefix came from the startup hook
    assert float(response.headers[COMPUTE_HEADER]) >= 0


@pytest.mark.parametrize("payload, loc", [({"fo": "bar"}, ["foo"]), ({"foo": "x", "times": 99}, ["times"]),
                                          ({"foo": 3}, ["foo"])])
def test_schema_violation_is_422_naming_the_field(client: TestClient, payload: dict, loc: list) -> None:
    response = client.post("/echo", json=payload)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "invalid_payload"
    assert [d["loc"] for d in error["detail"]] == [loc]
    assert loc[0] in error["message"]


def test_plain_dict_sync_get_and_typed_errors(client: TestClient) -> None:
    assert client.post("/raw", json={"any": [1, 2]}).json() == {"got": {"any": [1, 2]}}
    assert client.post("/sync_add", json={"a": 2, "b": 3}).json() == {"sum": 5}
    assert client.get("/ping").json() == {"pong": True}
    missing = client.post("/nope", json={})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    assert client.get("/echo").json()["error"]["type"] == "method_not_allowed"
    malformed = client.post("/echo", content=b"{not json")
    assert malformed.status_code == 400 and malformed.json()["error"]["type"] == "malformed_json"


def test_a_raising_cord_returns_the_remote_traceback(client: TestClient) -> None:
    response = client.post("/fail", json={"value": "v1"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "remote_error"
    remote = error["remote"]
    assert remote["type"] == "ValueError" and remote["message"] == "bad value v1"
    functions = [frame["function"] for frame in remote["traceback"]]
    assert functions == ["fail", "_explode"]  # the SDK's own frames are left out
    assert remote["traceback"][-1]["file"].endswith("basic.py") and "raise ValueError" in remote["traceback"][-1]["code"]


def test_streams_sse_and_custom_media_types(client: TestClient) -> None:
    response = client.post("/words", json={"foo": "w", "times": 2})
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text == 'data: {"word":"w0"}\n\ndata: {"word":"w1"}\n\n'
    text = client.post("/text_stream", json={"foo": "t", "times": 2})
    assert text.headers["content-type"].startswith("text/plain") and text.text == "t0\nt1\n"
    assert client.post("/sync_lines", json={"foo": "x", "times": 2}).text == 'data: {"line":0}\n\ndata: {"line":1}\n\n'
    # a cord that returns an async iterator only when asked streams only then
    maybe = client.post("/maybe_stream", json={"stream": True})
    assert maybe.text.count("data: ") == 3 and maybe.headers["content-type"].startswith("text/event-stream")
    assert client.post("/maybe_stream", json={}).json() == {"index": "all"}
    broken = client.post("/fail_midstream", json={}).text.split("\n\n")
    assert broken[0] == 'data: {"ok":1}'
    error = json.loads(broken[1].removeprefix("data: "))["error"]
    assert error["type"] == "remote_error" and error["remote"]["type"] == "RuntimeError"
    assert client.get("/_canopy/health").json()["in_flight"] == 0  # every slot was released


def test_openapi_holds_the_cord_schemas(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"EchoArgs", "EchoOut", "Word"} <= set(spec["components"]["schemas"])
    echo = spec["paths"]["/echo"]["post"]
    assert echo["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/EchoArgs"}
    assert echo["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/EchoOut"}
    assert "text/event-stream" in spec["paths"]["/words"]["post"]["responses"]["200"]["content"]
    assert not any(path.startswith("/_canopy") for path in spec["paths"])
    assert client.get("/docs").status_code == 200
    info = client.get("/_canopy/info").json()
    assert info["username"] == "tester" and {c["path"] for c in info["cords"]} >= {"/echo", "/words"}


def test_health_reports_starting_until_the_hooks_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASIC_STARTUP_DELAY_S", "0.5")
    with TestClient(create_app(load_chute("tests.canopy.chutes.basic:chute"), concurrency=7)) as test_client:
        starting = test_client.get("/_canopy/health")
        assert starting.status_code == 503 and starting.json()["status"] == "starting"
        assert test_client.post("/echo", json={"foo": "x"}).json()["error"]["type"] == "unavailable"
        time.sleep(0.8)
        ready = test_client.get("/_canopy/health")
        assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["concurrency"] == 7


class _Upstream(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for index in range(3):
                self.wfile.write(f"data: {json.dumps({'i': index})}\n\n".encode())
                self.wfile.flush()
            return
        data = json.dumps({"path": self.path, "body": body}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_passthrough_forwards_to_the_local_upstream() -> None:
    port, dead_port = free_port(), free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), _Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    chute = Chute(username="tester", name="passthrough")

    @chute.cord(path="/v1/chat", passthrough=True, passthrough_port=port, passthrough_path="/upstream/chat")
    async def chat(self, args: dict) -> dict:
        return {}

    @chute.cord(path="/down", passthrough=True, passthrough_port=dead_port)
    async def down(self, args: dict) -> dict:
        return {}

    try:
        with TestClient(create_app(chute)) as test_client:
            time.sleep(0.05)
            plain = test_client.post("/v1/chat", json={"q": 1})
            assert plain.status_code == 201 and plain.json() == {"path": "/upstream/chat", "body": {"q": 1}}
            streamed = test_client.post("/v1/chat", json={"stream": True})
            assert streamed.headers["content-type"].startswith("text/event-stream")
            assert streamed.text == 'data: {"i": 0}\n\ndata: {"i": 1}\n\ndata: {"i": 2}\n\n'
            gone = test_client.post("/down", json={})
            assert gone.status_code == 502 and gone.json()["error"]["type"] == "upstream_unavailable"
            assert test_client.get("/_canopy/health").json()["in_flight"] == 0
    finally:
        server.shutdown()
