"""Test chute: echo, SSE token streams with OpenAI usage, a slow cord, a raising cord, a crash.

Its ref is ``tests.support.chutes.ECHO``. Runs on the CPU pseudo-device.
"""

from __future__ import annotations

import asyncio
import json
import os

from pydantic import BaseModel, Field

from canopy.chute import Chute

chute = Chute(username="tests", name="echo", node_selector={"gpu_count": 1, "min_vram_gb_per_gpu": 0},
              concurrency=2)


class EchoArgs(BaseModel):
    text: str
    repeat: int = Field(1, ge=1, le=100)


class StreamArgs(BaseModel):
    tokens: int = Field(3, ge=0, le=100000)
    delay_s: float = 0.0
    crash_after: int | None = None  # os._exit after this many tokens (the process dies mid-stream)


class SleepArgs(BaseModel):
    seconds: float = 1.0


@chute.on_startup()
async def init(self):
    self.instance_id = os.environ.get("CANOPY_INSTANCE_ID", "")


@chute.cord(public_api_path="/v1/echo")
async def echo(self, args: EchoArgs) -> dict:
    return {"text": args.text * args.repeat, "usage": {"prompt_tokens": 1, "completion_tokens": args.repeat,
                                                        "total_tokens": 1 + args.repeat}}


@chute.cord(stream=True)
async def tokens(self, args: StreamArgs):
    for index in range(args.tokens):
        if args.crash_after is not None and index == args.crash_after:
            os._exit(17)
        if args.delay_s:
            await asyncio.sleep(args.delay_s)
        yield "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": f"t{index} "}}]}) + "\n\n"
    usage = {"prompt_tokens": 2, "completion_tokens": args.tokens, "total_tokens": 2 + args.tokens}
    yield "data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n"
    yield "data: [DONE]\n\n"


@chute.cord()
async def sleep(self, args: SleepArgs) -> dict:
    await asyncio.sleep(args.seconds)
    return {"slept": args.seconds, "instance": self.instance_id}


@chute.cord()
async def whoami(self) -> dict:
    return {"instance": self.instance_id, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "pid": os.getpid()}


@chute.cord()
async def boom(self, args: SleepArgs) -> dict:
    raise ValueError(f"boom after {args.seconds}")


@chute.cord(stream=True)
async def fail_midway(self, args: StreamArgs):
    yield "data: {\"n\": 0}\n\n"
    raise RuntimeError("the stream broke")
