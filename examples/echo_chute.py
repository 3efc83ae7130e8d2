"""A tiny echo chute: the smallest complete example of the Canopy SDK.

Serve it and call it::

    canopy run examples/echo_chute.py:chute --dev --port 8000
    curl -s localhost:8000/echo -d '{"text": "hello"}'
    curl -sN localhost:8000/stream -d '{"text": "hello", "times": 3}'
    CANOPY_DEV_URL=http://127.0.0.1:8000 python examples/echo_chute.py

The miner hosts it with ``python -m canopy.instance serve examples/echo_chute.py:chute``.
It needs no GPU (``min_vram_gb_per_gpu=0``, so the devnet's CPU pseudo-device fits).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from pydantic import BaseModel, Field

from canopy import Chute, NodeSelector

chute = Chute(
    username="canopy",
    name="echo",
    image="python:3.11-slim",
    tagline="Echo text back, whole or streamed word by word.",
    readme="POST /echo {\"text\": ...} returns the text; POST /stream streams it as SSE events.",
    node_selector=NodeSelector(gpu_count=1, min_vram_gb_per_gpu=0),
    concurrency=16,
)


class EchoArgs(BaseModel):
    text: str = Field(..., max_length=10_000, description="what to echo")
    times: int = Field(1, ge=1, le=100, description="how many times (stream: how many events)")
    delay_s: float = Field(0.0, ge=0, le=5, description="pause between streamed events")


class EchoOut(BaseModel):
    text: str
    instance_started_at: float


class EchoChunk(BaseModel):
    index: int
    text: str


@chute.on_startup()
async def init(self) -> None:
    """Runs once per instance before it takes traffic; state lives on the chute (self)."""
    self.started_at = time.time()


@chute.cord(public_api_path="/echo")
async def echo(self, args: EchoArgs) -> EchoOut:
    """Return the text (repeated ``times`` times, space separated)."""
    return EchoOut(text=" ".join([args.text] * args.times), instance_started_at=self.started_at)


@chute.cord(path="/stream")
async def stream(self, args: EchoArgs) -> AsyncIterator[EchoChunk]:
    """Stream the text ``times`` times, one SSE event (``data: {...}``) each."""
    for index in range(args.times):
        yield EchoChunk(index=index, text=args.text)
        if args.delay_s:
            await asyncio.sleep(args.delay_s)


async def _demo() -> None:
    print(await echo({"text": "hello", "times": 2}))
    async for chunk in await stream(EchoArgs(text="hi", times=3)):
        print(chunk)


if __name__ == "__main__":
    asyncio.run(_demo())
