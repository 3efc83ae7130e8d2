"""Test chute whose startup hook raises: its instance reports ``failed`` and exits."""

from __future__ import annotations

from canopy.chute import Chute

chute = Chute(username="tests", name="bad-hook", node_selector={"gpu_count": 1, "min_vram_gb_per_gpu": 0})


@chute.on_startup()
async def init(self):
    raise RuntimeError("the model file is missing")


@chute.cord()
async def ping(self) -> dict:
    return {"ok": True}
