"""pm2 entry point of the validator: ``python neurons/validator.py --netuid N --wallet.name ...``.

Today's loop: sync the metagraph, ping every serving miner over the signed protocol and
log who answered. GraVal verification, work measurement, scoring and weights arrive
with the validator issue and plug into this loop.
"""

from __future__ import annotations

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loguru import logger  # noqa: E402

from canopy.neuron import NeuronContext, run_neuron  # noqa: E402
from protocol.dendrite import Dendrite  # noqa: E402
from protocol.synapse import Ping  # noqa: E402

STEP_SECONDS = 12.0


async def main(ctx: NeuronContext) -> None:
    async with Dendrite(ctx.wallet) as dendrite:
        while not ctx.stop.is_set():
            graph = await ctx.chain.metagraph(ctx.settings.netuid)
            miners = graph.serving_miners()
            results = await dendrite.query(miners, Ping(), timeout=5.0)
            answered = [f"{m.uid}:{r.latency_s * 1000:.0f}ms" for m, r in zip(miners, results) if r.ok]
            failed = [f"{m.uid}:{r.status}" for m, r in zip(miners, results) if not r.ok]
            logger.info("block {}: {} miners serving, answered {} failed {}", graph.block, len(miners), answered, failed)
            try:
                await asyncio.wait_for(ctx.stop.wait(), timeout=STEP_SECONDS)
            except asyncio.TimeoutError:
                pass


if __name__ == "__main__":
    run_neuron("validator", main)
