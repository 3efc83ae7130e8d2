"""Chains of chutes: depends() over HTTP (retries, timeouts, remote tracebacks) and run_local."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web
from fastapi.testclient import TestClient

import canopy
from canopy.chains import ChuteUnresolved, RemoteChuteError, dependencies_of, depends
from canopy.instance import create_app
from tests.canopy.chutes import pipeline, shout
from tests.support import free_port
from tests.support.instances import post, start_instance


def test_dependencies_are_found_from_the_proxies() -> None:
    assert dependencies_of(pipeline.chute) == [shout.chute]
    assert dependencies_of(shout.chute) == []


async def test_run_local_wires_the_graph_in_one_process() -> None:
    shout.EVENTS.clear()
    async with canopy.run_local(pipeline.chute):
        assert shout.EVENTS == ["shout:startup", "pipeline:startup"]  # dependencies first
        out = await pipeline.run({"text": "hey"})
        assert out == pipeline.Out(result="HEY!", letters=["H", "E", "Y"])
        loud = await pipeline.shouter.shout({"text": "a"})
        assert isinstance(loud, shout.ShoutOut) and loud.text == "A!"  # typed like a remote reply
        with pytest.raises(RemoteChuteError) as invalid:  # payloads are still validated
            await pipeline.run_invalid({"text": "x"})
        assert invalid.value.kind == "invalid_payload" and invalid.value.detail[0]["loc"] == ["text"]
        with pytest.raises(RemoteChuteError) as failed:
            await pipeline.run_boom({"text": "x"})
        assert failed.value.remote_type == "ValueError" and [f["function"] for f in failed.value.frames] == ["boom", "_check"]
    assert shout.EVENTS[-2:] == ["pipeline:shutdown", "shout:shutdown"]
    assert not pipeline.chute.hosted and not shout.chute.hosted


def test_run_local_is_usable_synchronously() -> None:
    shout.EVENTS.clear()
    with canopy.run_local(shout.chute) as graph:
        assert graph.run(shout.shout({"text": "s"})) == shout.ShoutOut(text="S!")
    assert shout.EVENTS == ["shout:startup", "shout:shutdown"]


async def test_an_unreachable_dependency_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CANOPY_CHUTE_URLS", raising=False)
    with pytest.raises(ChuteUnresolved, match="CANOPY_CHUTE_URLS.*run_local"):
        await pipeline.shouter.shout({"text": "x"})
    with pytest.raises(AttributeError, match="no cord 'whisper'"):
        pipeline.shouter.whisper


async def test_remote_calls_bring_back_the_remote_stack_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with start_instance("tests.canopy.chutes.shout:chute", tmp_path) as shout_instance:
        monkeypatch.setenv("CANOPY_CHUTE_URLS", json.dumps({"tester/shout": shout_instance.url}))
        assert await pipeline.shouter.shout({"text": "up"}) == shout.ShoutOut(text="UP!")
        letters = [chunk async for chunk in await pipeline.shouter.letters({"text": "ab"})]
        assert letters == [{"letter": "A"}, {"letter": "B"}]
        with pytest.raises(RemoteChuteError) as raised:
            await pipeline.shouter.boom({"text": "zz"})
        error = raised.value
        assert (error.status, error.kind, error.remote_type) == (500, "remote_error", "ValueError")
        assert error.remote_message == "cannot shout 'zz'"
        assert [frame["function"] for frame in error.frames] == ["boom", "_check"]
        assert "Remote traceback (most recent call last)" in str(error) and "shout.py" in str(error)
        # a chute instance calling its dependency over HTTP: the nested trace reaches the caller
        by_id = json.dumps({shout.chute.chute_id: shout_instance.url})
        with start_instance("tests.canopy.chutes.pipeline:chute", tmp_path,
                            env={"CANOPY_CHUTE_URLS": by_id}) as pipe:
            assert post(pipe.url + "/run", {"text": "ok"}) == (200, {"result": "OK!", "letters": ["O", "K"]})
            status, body = post(pipe.url + "/run_boom", {"text": "deep"})
            assert status == 500 and body["error"]["remote"]["type"] == "RemoteChuteError"
            assert "cannot shout 'deep'" in body["error"]["message"] and "in _check" in body["error"]["message"]


async def _fake_server(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/shout", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def test_retries_with_backoff_then_give_up() -> None:
    hits: list[str] = []

    async def flaky(request: web.Request) -> web.Response:
        hits.append("flaky")
        if len(hits) <= 2:
            return web.json_response({"error": {"type": "busy", "message": "full"}}, status=503 if len(hits) == 1 else 429)
        return web.json_response({"text": "FINALLY", "loud": True})

    async def always_busy(request: web.Request) -> web.Response:
        hits.append("busy")
        return web.json_response({"error": {"type": "busy", "message": "full"}}, status=429)

    runner, url = await _fake_server(flaky)
    try:
        proxy = depends(shout.chute, retries=3, timeout=5, backoff_s=0.01, url=url)
        assert await proxy.shout({"text": "x"}) == shout.ShoutOut(text="FINALLY")
        assert hits == ["flaky"] * 3
    finally:
        await runner.cleanup()
    hits.clear()
    runner, url = await _fake_server(always_busy)
    try:
        with pytest.raises(RemoteChuteError) as busy:
            await depends(shout.chute, retries=1, backoff_s=0.01, url=url).shout({"text": "x"})
        assert busy.value.status == 429 and busy.value.kind == "busy" and hits == ["busy"] * 2
    finally:
        await runner.cleanup()
    with pytest.raises(RemoteChuteError) as refused:
        await depends(shout.chute, retries=2, backoff_s=0.01, url=f"http://127.0.0.1:{free_port()}").shout({"text": "x"})
    assert refused.value.kind == "connection_failed"


async def test_per_call_timeout() -> None:
    async def sleepy(request: web.Request) -> web.Response:
        await asyncio.sleep(0.6)
        return web.json_response({"text": "late"})

    runner, url = await _fake_server(sleepy)
    try:
        with pytest.raises(RemoteChuteError) as late:
            await depends(shout.chute, retries=0, timeout=0.2, url=url).shout({"text": "x"})
        assert late.value.kind == "timeout"
    finally:
        await runner.cleanup()


def test_dev_mode_runs_dependencies_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CANOPY_CHUTE_URLS", raising=False)
    shout.EVENTS.clear()
    with TestClient(create_app(pipeline.chute, dev=True)) as client:
        for _ in range(100):
            if client.get("/_canopy/health").status_code == 200:
                break
            asyncio.run(asyncio.sleep(0.01))
        assert client.post("/run", json={"text": "dev"}).json() == {"result": "DEV!", "letters": ["D", "E", "V"]}
    assert shout.EVENTS == ["shout:startup", "pipeline:startup", "pipeline:shutdown", "shout:shutdown"]
