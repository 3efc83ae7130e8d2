"""Test chute that needs two 80 GB H100s: refused on a CPU pseudo-device."""

from canopy.chute import Chute

chute = Chute(username="tests", name="gpu-only",
              node_selector={"gpu_count": 2, "min_vram_gb_per_gpu": 80, "include": ["h100"]})


@chute.cord()
async def ping(self) -> dict:
    return {"ok": True}
