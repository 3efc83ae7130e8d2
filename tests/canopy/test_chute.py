"""Chute and cord definition: ids, paths, duplicates, schemas, describe, load_chute."""

from __future__ import annotations

import uuid
from typing import AsyncIterator

import pytest
from pydantic import BaseModel

import canopy
from canopy.chute import CANOPY_NAMESPACE, Chute, ChuteInfo, ChuteLoadError, chute_id, load_chute
from canopy.cord import CordDefinitionError
from canopy.node_selector import NodeSelector


class Args(BaseModel):
    foo: str


class Out(BaseModel):
    bar: int


def make() -> Chute:
    return Chute(username="alice", name="demo", node_selector={"gpu_count": 2, "min_vram_gb_per_gpu": 24})


def test_chute_id_is_stable_uuid5() -> None:
    assert chute_id("alice", "demo") == str(uuid.uuid5(CANOPY_NAMESPACE, "alice/demo"))
    assert make().chute_id == chute_id("alice", "demo") != chute_id("alice", "demo2")


def test_chute_fields_are_validated() -> None:
    for bad in ({"username": ""}, {"name": "has space"}, {"concurrency": 0}, {"max_instances": 0},
                {"node_selector": {"gpu_count": 12}}):
        with pytest.raises(ValueError):
            Chute(**{"username": "alice", "name": "demo", **bad})
    chute = make()
    assert chute.node_selector == NodeSelector(gpu_count=2, min_vram_gb_per_gpu=24)
    assert Chute("a", "b", shutdown_after_seconds=60).extra == {"shutdown_after_seconds": 60}


def test_cord_path_defaults_to_function_name_and_public_path_to_path() -> None:
    chute = make()

    @chute.cord()
    async def echo(self, args: Args) -> Out:
        return Out(bar=1)

    assert isinstance(echo, canopy.Cord)
    assert (echo.path, echo.method, echo.public_api_path, echo.public_api_method) == ("/echo", "POST", "/echo", "POST")
    assert chute.cords == {"/echo": echo}
    assert chute.echo is echo  # cords by function name, as in the Chutes SDK


@pytest.mark.parametrize("path", ["/a b", "/../etc", "/_canopy/health", "/x//y", "", "/é", "//"])
def test_bad_paths_are_refused(path: str) -> None:
    chute = make()
    with pytest.raises(CordDefinitionError):
        @chute.cord(path=path)
        async def echo(self, args: dict) -> dict:
            return args


def test_duplicate_routes_are_refused_at_definition() -> None:
    chute = make()

    @chute.cord(path="/x")
    async def first(self, args: dict) -> dict:
        return args

    with pytest.raises(CordDefinitionError, match="POST /x is already the cord 'first'"):
        @chute.cord(path="/x")
        async def second(self, args: dict) -> dict:
            return args

    @chute.cord(path="/x", method="GET", public_api_path="/x-get")
    async def third(self) -> dict:
        return {}
    assert len(chute.cords) == 2


def test_bad_signatures_and_methods_are_refused() -> None:
    chute = make()
    with pytest.raises(CordDefinitionError, match="self"):
        @chute.cord()
        async def no_self() -> dict:
            return {}
    with pytest.raises(CordDefinitionError, match="need defaults"):
        @chute.cord()
        async def two(self, a: dict, b: dict) -> dict:
            return a
    with pytest.raises(CordDefinitionError, match="method"):
        @chute.cord(method="FETCH")
        async def fetch(self, a: dict) -> dict:
            return a
    with pytest.raises(CordDefinitionError, match="passthrough_port"):
        @chute.cord(passthrough=True, passthrough_port=70000)
        async def up(self, a: dict) -> dict:
            return a


def test_paths_and_passthrough_port_default_as_in_the_chutes_sdk() -> None:
    chute = make()

    @chute.cord(path="echo/")
    async def echo(self, args: dict) -> dict:
        return args

    @chute.cord(passthrough=True)
    async def upstream(self, args: dict) -> dict:
        return args

    assert echo.path == "/echo" and echo.public_api_path == "/echo"
    assert upstream.passthrough_port == 8000 and upstream.passthrough_path == "/upstream"


def test_schemas_come_from_hints_and_input_schema_overrides() -> None:
    chute = make()

    @chute.cord()
    async def typed(self, args: Args) -> Out:
        return Out(bar=1)

    @chute.cord(input_schema={"type": "object", "properties": {"q": {"type": "string"}}})
    async def overridden(self, args: dict) -> dict:
        return args

    @chute.cord(input_schema=Args, minimal_input_schema=Args)
    async def by_model(self, args):
        return args

    @chute.cord()
    async def streamed(self, args: Args) -> AsyncIterator[Out]:
        yield Out(bar=1)

    info = {c.path: c for c in chute.describe().cords}
    assert info["/typed"].input_schema["required"] == ["foo"]
    assert info["/typed"].output_schema["properties"]["bar"]["type"] == "integer"
    assert info["/overridden"].input_schema["properties"] == {"q": {"type": "string"}}
    assert info["/by_model"].input_schema["title"] == "Args" == info["/by_model"].minimal_input_schema["title"]
    assert info["/streamed"].stream and info["/streamed"].output_content_type == "text/event-stream"
    assert info["/streamed"].output_schema["title"] == "Out"
    assert chute.cords["/by_model"].validate({"foo": "x"}) == Args(foo="x")


def test_describe_and_hooks() -> None:
    chute = make()

    @chute.on_startup()
    def a(self):
        self.value = 1

    @chute.on_startup(priority=10)
    async def first(self):
        self.value = 0

    assert chute.startup_hooks == [first, a]
    with pytest.raises(TypeError):
        chute.on_startup()(lambda: None)
    info = chute.describe()
    assert isinstance(info, ChuteInfo)
    assert ChuteInfo.model_validate_json(info.model_dump_json()) == info
    assert info.node_selector.gpu_count == 2 and info.image == "" and info.cords == []


def test_load_chute_by_module_and_file() -> None:
    chute = load_chute("tests.canopy.chutes.basic:chute")
    assert (chute.username, chute.name) == ("tester", "basic")
    assert load_chute("tests.canopy.chutes.basic") is chute  # attr defaults to chute
    by_file = load_chute("tests/canopy/chutes/shout.py:chute")
    assert by_file.name == "shout"


@pytest.mark.parametrize("ref, message", [
    ("no_such_module_xyz:chute", "no module named 'no_such_module_xyz'"),
    ("tests.canopy.chutes.basic:nope", "has no attribute 'nope'"),
    ("tests.canopy.chutes.basic:EchoArgs", "not a canopy.Chute"),
    ("tests.canopy.chutes.broken_import:chute", "ModuleNotFoundError"),
    ("tests/canopy/chutes/missing.py:chute", "does not exist"),
    ("", "empty chute reference"),
])
def test_load_chute_errors_name_the_fix(ref: str, message: str) -> None:
    with pytest.raises(ChuteLoadError, match=message):
        load_chute(ref)


def test_cord_call_outside_hosting_needs_dev_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CANOPY_DEV_URL", raising=False)
    chute = make()

    @chute.cord()
    async def echo(self, args: dict) -> dict:
        return args

    import asyncio
    with pytest.raises(RuntimeError, match="canopy run.*CANOPY_DEV_URL"):
        asyncio.run(echo({"a": 1}))


def test_image_is_lazily_exported() -> None:
    assert canopy.Chute is Chute and canopy.NodeSelector is NodeSelector
    try:
        image = canopy.Image
    except AttributeError as exc:  # canopy.image not written yet: a clear message, not an ImportError
        assert "canopy.image" in str(exc)
    else:
        assert image.__name__ == "Image"


def test_chutes_sdk_output_schema_and_provision_timeout_are_accepted() -> None:
    chute = make()
    custom = {"type": "object", "properties": {"ok": {"type": "boolean"}}}

    @chute.cord(public_api_path="/raw", output_schema=custom, provision_timeout=180)
    async def raw(self, args: dict) -> dict:
        return {"ok": True}

    @chute.cord(output_schema=Out)
    async def typed(self, args: dict):
        return {"bar": 1}

    assert raw.info().output_schema == custom and raw.provision_timeout == 180
    assert typed.output_type is Out and typed.info().output_schema["title"] == "Out"
    with pytest.raises(CordDefinitionError, match="output_schema"):
        @chute.cord(output_schema="nope")
        async def bad(self, args: dict) -> dict:
            return args
    with pytest.raises(CordDefinitionError, match="provision_timeout"):
        @chute.cord(provision_timeout=0)
        async def bad2(self, args: dict) -> dict:
            return args
