"""pm2 entry point of the miner: ``python neurons/miner.py --netuid N --wallet.name ...``.

Starts the miner's axon (btauth/1-verified, validators only), publishes its ip:port on
chain, and serves until SIGINT/SIGTERM. The synapses it answers grow with the miner
issues (inventory, GraVal, chutes); today it answers ``Ping``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from canopy.neuron import NeuronContext, run_neuron  # noqa: E402
from protocol.axon import Axon  # noqa: E402
from protocol.nonces import RedisNonceStore  # noqa: E402


async def main(ctx: NeuronContext) -> None:
    # With --redis_url, replicas of one hotkey share replay protection; otherwise in-process.
    nonce_store = RedisNonceStore(ctx.settings.redis_url) if ctx.settings.redis_url else None
    axon = Axon(ctx.wallet, ctx.chain, ctx.settings.netuid, ctx.settings.axon,
                nonce_store=nonce_store, metagraph_refresh_s=12.0)
    await axon.start()
    try:
        await ctx.stop.wait()
    finally:
        await axon.stop()


if __name__ == "__main__":
    run_neuron("miner", main)
