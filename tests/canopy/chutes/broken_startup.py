"""A chute whose startup hook raises (the instance must report failed and exit non-zero)."""

from canopy import Chute, NodeSelector

chute = Chute(username="tester", name="broken-startup", node_selector=NodeSelector(min_vram_gb_per_gpu=0))


@chute.on_startup()
async def load(self) -> None:
    raise RuntimeError("weights file missing: /models/nothing.safetensors")


@chute.cord()
async def hello(self, args: dict) -> dict:
    return {"hello": "world"}
