"""Test chute that ignores SIGTERM once started: the miner must SIGKILL it after the grace period."""

from __future__ import annotations

import signal

from canopy.chute import Chute

chute = Chute(username="tests", name="stubborn", node_selector={"gpu_count": 1, "min_vram_gb_per_gpu": 0})


@chute.on_startup()
async def init(self):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@chute.cord()
async def ping(self) -> dict:
    return {"ok": True}
