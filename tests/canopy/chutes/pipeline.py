"""A chute that depends on the shout chute (chains tests)."""

from __future__ import annotations

from pydantic import BaseModel

import canopy
from canopy import Chute, NodeSelector
from tests.canopy.chutes import shout as shout_module
from tests.canopy.chutes.shout import EVENTS

shouter = canopy.depends(shout_module.chute, retries=2, timeout=10, backoff_s=0.05)

chute = Chute(username="tester", name="pipeline", node_selector=NodeSelector(min_vram_gb_per_gpu=0))


class In(BaseModel):
    text: str


class Out(BaseModel):
    result: str
    letters: list[str] = []


@chute.on_startup()
async def start(self) -> None:
    EVENTS.append("pipeline:startup")


@chute.on_shutdown()
def stop(self) -> None:
    EVENTS.append("pipeline:shutdown")


@chute.cord()
async def run(self, args: In) -> Out:
    loud = await shouter.shout({"text": args.text})
    letters = [chunk["letter"] async for chunk in await shouter.letters({"text": args.text})]
    return Out(result=loud.text, letters=letters)


@chute.cord()
async def run_boom(self, args: In) -> Out:
    await shouter.boom({"text": args.text})
    return Out(result="unreachable")


@chute.cord()
async def run_invalid(self, args: In) -> Out:
    await shouter.shout({"wrong": args.text})
    return Out(result="unreachable")
