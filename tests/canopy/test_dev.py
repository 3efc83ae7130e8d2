"""The CANOPY_DEV_URL client: calling cords of a served chute as async functions."""

from __future__ import annotations

import pytest

from canopy.chains import RemoteChuteError
from canopy.dev import DevClient
from tests.canopy.chutes import basic
from tests.support.instances import Instance


async def test_cords_are_awaitable_over_the_dev_url(basic_instance: Instance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANOPY_DEV_URL", basic_instance.url)
    assert not basic.chute.hosted
    assert await basic.echo({"foo": "bar"}) == {"foo": "bar", "prefix": ">"}
    assert await basic.echo(basic.EchoArgs(foo="m", times=2)) == {"foo": "mm", "prefix": ">"}
    assert await basic.echo(foo="kw") == {"foo": "kw", "prefix": ">"}
    chunks = [chunk async for chunk in await basic.words({"foo": "z", "times": 2})]
    assert chunks == [{"word": "z0"}, {"word": "z1"}]
    assert [chunk async for chunk in await basic.maybe_stream({"stream": True})] == [{"index": i} for i in range(3)]
    assert await basic.ping() == {"pong": True}


async def test_dev_errors_carry_the_remote_traceback(basic_instance: Instance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANOPY_DEV_URL", basic_instance.url)
    with pytest.raises(RemoteChuteError) as invalid:
        await basic.echo({"nope": 1})
    assert invalid.value.kind == "invalid_payload" and invalid.value.status == 422
    assert invalid.value.detail[0]["loc"] == ["foo"]
    with pytest.raises(RemoteChuteError) as failed:
        await basic.fail({"value": "dev"})
    error = failed.value
    assert (error.kind, error.remote_type, error.remote_message) == ("remote_error", "ValueError", "bad value dev")
    assert "Remote traceback" in str(error) and "in _explode" in str(error)
    with pytest.raises(RemoteChuteError, match="stream broke"):
        async for _ in await basic.fail_midstream({}):
            pass


async def test_dev_client_by_path(basic_instance: Instance) -> None:
    client = DevClient(basic_instance.url)
    assert (await client.health())["status"] == "ready"
    assert await client.call("raw", {"x": 1}) == {"got": {"x": 1}}
