"""pm2 entry point of the miner: ``python neurons/miner.py --netuid N --wallet.name ...``.

Starts the miner's axon (btauth/1-verified, validators only), publishes its ip:port on
chain, and serves until SIGINT/SIGTERM. It answers ``Ping``, the GraVal synapses
(Inventory, DeviceInfo, Prove, Open) for the devices it finds (``miner.inventory``), and
``Invoke`` for the chutes named in ``--chutes.config`` (``miner.hosting``), each run as
instance processes on those devices (``miner.instances``) and served by
``miner.chutes_service``, whose Inventory reply adds the hosted chutes and their load.
On shutdown the axon stops first, then every instance gets SIGTERM (SIGKILL after
``--chutes.shutdown_grace_s``).
"""

from __future__ import annotations

import os
import sys

from loguru import logger

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# CUDA numbers devices fastest-first by default; NVML (miner.inventory) in PCI bus order.
os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")

from canopy.neuron import NeuronContext, StartupError, run_neuron  # noqa: E402
from canopy.config import ChutesSettings, canopy_home  # noqa: E402
from miner.chutes_service import ChutesService  # noqa: E402
from miner.graval.service import GravalService  # noqa: E402
from miner.hosting import HostingConfigError, HostingPlan, load_hosting_config, plan_hosting  # noqa: E402
from miner.instances import InstanceManager  # noqa: E402
from miner.inventory import cpu_device, discover_devices  # noqa: E402
from protocol.axon import Axon  # noqa: E402
from protocol.graval.devices import DeviceSpec  # noqa: E402
from protocol.nonces import RedisNonceStore  # noqa: E402


async def hosting_plan(settings: ChutesSettings, devices: list[DeviceSpec]) -> HostingPlan:
    """What to host, from ``--chutes.config`` (nothing without one)."""
    if not settings.config:
        logger.info("no --chutes.config: this miner hosts no chutes")
        return HostingPlan()
    try:
        config = load_hosting_config(settings.config)
    except HostingConfigError as error:
        raise StartupError(str(error)) from None
    plan = await plan_hosting(config, devices)
    for chute in plan.hosted:
        logger.info("hosting chute {} ({}): {} instance(s), concurrency {}", chute.info.name, chute.entry.ref,
                    len(chute.devices), chute.concurrency)
    if plan.refused:  # each was logged with its reason by plan_hosting
        logger.warning("not hosting {} of the {} chutes configured", len(plan.refused), len(config.chutes))
    return plan


def instance_manager(settings: ChutesSettings, plan: HostingPlan) -> InstanceManager:
    return InstanceManager(
        plan.instance_specs(), port_range=(settings.port_min, settings.port_max),
        log_dir=settings.log_dir or canopy_home() / "logs", start_timeout_s=settings.start_timeout_s,
        health_interval_s=settings.health_interval_s, grace_s=settings.shutdown_grace_s)


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
    verification = GravalService(devices, backend=graval.backend, session_ttl_s=graval.session_ttl_s).attach(axon)

    chutes = ctx.settings.chutes
    plan = await hosting_plan(chutes, devices)
    manager = instance_manager(chutes, plan)
    ChutesService(manager, plan.hosted_chutes(), refused=plan.refused, devices=devices, loads=verification.loads,
                  invoke_timeout_s=chutes.invoke_timeout_s, max_payload_bytes=chutes.max_payload_bytes).attach(axon)
    await manager.start(wait=False)  # Invoke answers 503 chute_unavailable until an instance is ready
    try:
        await axon.start()
        await ctx.stop.wait()
    finally:
        await axon.stop()
        await manager.stop()


if __name__ == "__main__":
    run_neuron("miner", main)
