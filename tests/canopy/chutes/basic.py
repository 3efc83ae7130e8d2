"""A small chute exercising every cord kind: validated JSON, raw dict, sync, streaming, errors, slow."""

from __future__ import annotations

import asyncio
import os
import time
from typing import AsyncIterator

from pydantic import BaseModel, Field

from canopy import Chute, NodeSelector

chute = Chute(username="tester", name="basic", image="python:3.11-slim", tagline="test chute",
              node_selector=NodeSelector(gpu_count=1, min_vram_gb_per_gpu=0), concurrency=2)


class EchoArgs(BaseModel):
    foo: str
    times: int = Field(1, ge=1, le=10)


class EchoOut(BaseModel):
    foo: str
    prefix: str


class Word(BaseModel):
    word: str


@chute.on_startup()
async def init(self) -> None:
    self.prefix = ">"
    delay = float(os.environ.get("BASIC_STARTUP_DELAY_S", "0"))
    if delay:
        await asyncio.sleep(delay)


@chute.on_shutdown()
def bye(self) -> None:
    marker = os.environ.get("BASIC_SHUTDOWN_MARKER")
    if marker:
        with open(marker, "w") as handle:
            handle.write("shutdown ran")


@chute.cord(public_api_path="/echo")
async def echo(self, args: EchoArgs) -> EchoOut:
    """Echo foo back, repeated `times` times."""
    return EchoOut(foo=args.foo * args.times, prefix=self.prefix)


@chute.cord()
async def raw(self, payload: dict) -> dict:
    return {"got": payload}


@chute.cord()
def sync_add(self, args: dict) -> dict:
    return {"sum": args["a"] + args["b"]}


@chute.cord()
async def words(self, args: EchoArgs) -> AsyncIterator[Word]:
    for index in range(args.times):
        yield Word(word=f"{args.foo}{index}")
        await asyncio.sleep(0.3)


@chute.cord(output_content_type="text/plain")
async def text_stream(self, args: EchoArgs) -> AsyncIterator[str]:
    for index in range(args.times):
        yield f"{args.foo}{index}\n"


@chute.cord()
def sync_lines(self, args: EchoArgs):
    """A sync generator streams too (each item made in a worker thread)."""
    for index in range(args.times):
        yield {"line": index}


@chute.cord()
async def maybe_stream(self, args: dict):
    """Streams only when the payload says stream=true (like an LLM chat cord)."""
    if args.get("stream"):
        async def gen():
            for index in range(3):
                yield {"index": index}
        return gen()
    return {"index": "all"}


def _explode(value: str) -> None:
    raise ValueError(f"bad value {value}")


@chute.cord()
async def fail(self, args: dict) -> dict:
    _explode(args.get("value", "x"))
    return {}


@chute.cord()
async def fail_midstream(self, args: dict):
    yield {"ok": 1}
    raise RuntimeError("stream broke")


@chute.cord()
async def slow(self, args: dict) -> dict:
    await asyncio.sleep(float(args.get("s", 1.0)))
    return {"slept": args.get("s", 1.0), "t": time.time()}


@chute.cord(method="GET")
async def ping(self) -> dict:
    return {"pong": True}
