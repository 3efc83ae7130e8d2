"""pm2 entry point of the miner: ``python neurons/miner.py --netuid N --wallet.name ...``.

Starts the miner's axon (btauth/1-verified, validators only), publishes its ip:port on
chain, and serves until SIGINT/SIGTERM. It answers ``Ping`` and the GraVal synapses
(Inventory, DeviceInfo, Prove, Open) for the devices it finds (``miner.inventory``).
"""

from __future__ import annotations

import os
import sys

from loguru import logger

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# CUDA numbers devices fastest-first by default; NVML (miner.inventory) in PCI bus order.
os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")

from canopy.neuron import NeuronContext, run_neuron  # noqa: E402
from canopy.config import canopy_home  # noqa: E402
from miner.graval.service import GravalService  # noqa: E402
from miner.inventory import cpu_device, discover_devices  # noqa: E402
from protocol.axon import Axon  # noqa: E402
from protocol.nonces import RedisNonceStore  # noqa: E402


async def main(ctx: NeuronContext) -> None:
    # With --redis_url, replicas of one hotkey share replay protection; otherwise in-process.
    nonce_store = RedisNonceStore(ctx.settings.redis_url) if ctx.settings.redis_url else None
    axon = Axon(ctx.wallet, ctx.chain, ctx.settings.netuid, ctx.settings.axon,
                nonce_store=nonce_store, metagraph_refresh_s=12.0)
    graval = ctx.settings.graval
    devices = discover_devices(allow_cpu=False)
    if not devices and graval.cpu_devices:
        devices = [cpu_device(memory_bytes=graval.cpu_memory_mb << 20, salt=f"{canopy_home()}:{ctx.wallet.hotkey.ss58_address}:{i}")
                   .model_copy(update={"index": i}) for i in range(graval.cpu_devices)]
    if not devices:
        logger.warning("no GPU found: this miner offers no device (on the devnet, --graval.cpu_devices 1 adds a CPU pseudo-device)")
    for device in devices:
        logger.info("device {}: {} ({} MiB) {}", device.index, device.name, device.memory_bytes >> 20, device.uuid)
    GravalService(devices, backend=graval.backend, session_ttl_s=graval.session_ttl_s).attach(axon)
    await axon.start()
    try:
        await ctx.stop.wait()
    finally:
        await axon.stop()


if __name__ == "__main__":
    run_neuron("miner", main)
