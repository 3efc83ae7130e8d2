"""A dependency for the chains tests: upper-cases text; one cord raises from a nested call."""

from __future__ import annotations

from typing import AsyncIterator

from pydantic import BaseModel

from canopy import Chute, NodeSelector

EVENTS: list[str] = []

chute = Chute(username="tester", name="shout", node_selector=NodeSelector(min_vram_gb_per_gpu=0), concurrency=4)


class ShoutIn(BaseModel):
    text: str


class ShoutOut(BaseModel):
    text: str
    loud: bool = True


@chute.on_startup()
def start(self) -> None:
    EVENTS.append("shout:startup")
    self.suffix = "!"


@chute.on_shutdown()
async def stop(self) -> None:
    EVENTS.append("shout:shutdown")


@chute.cord()
async def shout(self, args: ShoutIn) -> ShoutOut:
    return ShoutOut(text=args.text.upper() + self.suffix)


def _check(text: str) -> None:
    raise ValueError(f"cannot shout {text!r}")


@chute.cord()
async def boom(self, args: ShoutIn) -> ShoutOut:
    _check(args.text)
    return ShoutOut(text="")


@chute.cord()
async def letters(self, args: ShoutIn) -> AsyncIterator[dict]:
    for letter in args.text:
        yield {"letter": letter.upper()}
