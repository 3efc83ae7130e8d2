"""pm2 entry point of the miner: ``canopy-miner --netuid N --wallet.name ...``.

Starts the miner's axon (btauth/1-verified, validators only), publishes its ip:port on
chain, and serves until SIGINT/SIGTERM. It answers ``Ping``, the GraVal synapses
(Inventory, DeviceInfo, Prove, Open) for the devices it finds (``miner.inventory``), and
``Invoke`` for the chutes named in ``--chutes.config`` (``miner.hosting``), each run as
instance processes on those devices (``miner.instances``) and served by
``miner.chutes_service``, whose Inventory reply adds the hosted chutes and their load.
Those hosting-file chutes are pinned, and carry the revision ``canopy deploy`` would give
their code (``miner.bundles.pinned_revision``, computed in a thread at start).

Registry chutes come from the validators: ``Announce`` and ``DeliverBundle``
(``miner.registry_service``) feed the announcements and the verified bundles
(``--chutes.bundle_dir``, default ``$CANOPY_HOME/bundles``), and the autoscaler
(``miner.autoscaler``, off with ``--chutes.autoscale false``) starts and drains their
instances. A miner with no hosting file hosts nothing until validators announce.
On shutdown the axon stops first, then the autoscaler, then every instance gets SIGTERM
(SIGKILL after ``--chutes.shutdown_grace_s``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from pathlib import Path

from loguru import logger
from prometheus_client import start_http_server

from node.runtime import NeuronContext, StartupError, run_neuron
from canopy.paths import canopy_home
from node.config import ChutesSettings
from miner.announcements import Announcements
from miner.autoscaler import Autoscaler, running_revisions
from miner.bundles import BundleStore, pinned_revision
from miner.chutes_service import ChutesService
from miner.graval.service import GravalService, ProverFactory
from miner.hosting import HostingConfigError, HostingPlan, load_hosting_config, plan_hosting
from miner.containers import ContainerEngine, ContainerImages, ContainerUnavailable
from miner.environments import EnvironmentCache
from miner.instances import InstanceManager
from miner.sandboxing import pip_build_sandbox
from miner.registry_service import RegistryService
from node.sandbox import SandboxUnavailable
from miner.inventory import cpu_device, discover_devices
from protocol.axon import Axon
from protocol.graval.devices import DeviceSpec
from protocol.nonces import RedisNonceStore


async def hosting_plan(settings: ChutesSettings, devices: list[DeviceSpec]) -> HostingPlan:
    """What to host, from ``--chutes.config`` (nothing without one)."""
    if not settings.config:
        logger.info("no --chutes.config: no pinned chutes (registry chutes come as validators announce them)")
        return HostingPlan()
    try:
        config = load_hosting_config(settings.config)
    except HostingConfigError as error:
        raise StartupError(str(error)) from None
    plan = await plan_hosting(config, devices)
    revisions = await asyncio.gather(*(asyncio.to_thread(pinned_revision, chute.entry.ref, Path.cwd())
                                       for chute in plan.hosted))
    for chute, revision in zip(plan.hosted, revisions):
        chute.revision = revision
        logger.info("hosting chute {} ({}): {} instance(s), concurrency {}, revision {}", chute.info.name,
                    chute.entry.ref, len(chute.devices), chute.concurrency, revision[:12] or "unknown")
    if plan.refused:  # each was logged with its reason by plan_hosting
        logger.warning("not hosting {} of the {} chutes configured", len(plan.refused), len(config.chutes))
    return plan


def instance_manager(settings: ChutesSettings, plan: HostingPlan, public_ip: str | None = None) -> InstanceManager:
    """The miner's instances, on the configured runtime; StartupError naming the fix when the
    runtime is missing or cannot run a chute of the hosting file."""
    sandbox = settings.runtime in ("sandbox", "container")
    containers = None
    if settings.runtime == "container":
        try:
            engine = ContainerEngine.detect(settings.container_engine)
        except ContainerUnavailable as error:
            raise StartupError(str(error)) from None
        containers = ContainerImages(engine, canopy_home() / "images")
    environments = EnvironmentCache(Path(settings.environment_dir).expanduser() if settings.environment_dir
                                    else canopy_home() / "environments", index_url=settings.pip_index_url,
                                    wrap=pip_build_sandbox if sandbox else None)
    try:
        manager = InstanceManager(
            plan.instance_specs(), port_range=(settings.port_min, settings.port_max),
            log_dir=settings.log_dir or canopy_home() / "logs", start_timeout_s=settings.start_timeout_s,
            health_interval_s=settings.health_interval_s, grace_s=settings.shutdown_grace_s,
            sandbox=sandbox, memory_mb=settings.instance_memory_mb, max_pids=settings.instance_max_pids,
            environments=environments, containers=containers,
            egress_prohibited=[public_ip] if public_ip and _ipv4(public_ip) else [])
    except SandboxUnavailable as error:
        raise StartupError(str(error)) from None
    for chute in plan.hosted:
        why = manager.refusal(chute.info.environment, chute.info.allow_external_egress, pinned=True)
        if why is not None:
            raise StartupError(f"chute {chute.entry.ref} of the hosting file cannot run here: {why}")
    return manager


def _ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


async def serve(ctx: NeuronContext, *, prover_factory: ProverFactory | None = None) -> None:
    """The miner until ``ctx.stop``: axon, GraVal service (``prover_factory``: the demo's cheater
    swaps in a dishonest prover), chute instances."""
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
    verification = GravalService(devices, backend=graval.backend, session_ttl_s=graval.session_ttl_s,
                                 prover_factory=prover_factory).attach(axon)

    chutes = ctx.settings.chutes
    plan = await hosting_plan(chutes, devices)
    manager = instance_manager(chutes, plan, ctx.settings.axon.external_ip)
    service = ChutesService(manager, plan.hosted_chutes(), refused=plan.refused, devices=devices,
                            loads=verification.loads, invoke_timeout_s=chutes.invoke_timeout_s,
                            max_payload_bytes=chutes.max_payload_bytes).attach(axon)
    bundles = BundleStore(Path(chutes.bundle_dir).expanduser() if chutes.bundle_dir else canopy_home() / "bundles")
    announcements = Announcements(chutes.announce_ttl_s)
    autoscaler = None
    if chutes.autoscale:
        autoscaler = Autoscaler(manager, service, announcements, bundles, devices, cpu_slots=chutes.cpu_device_slots,
                                interval_s=chutes.autoscale_interval_s, drain_timeout_s=chutes.drain_timeout_s)
    else:
        logger.info("--chutes.autoscale false: this miner hosts its hosting file's chutes only")
    RegistryService(announcements, bundles, autoscaler, running=lambda: running_revisions(manager)).attach(axon)
    if chutes.metrics_port:  # the autoscaler's decisions and the instances (prometheus_client's default registry)
        start_http_server(chutes.metrics_port, addr=chutes.metrics_ip)
        logger.info("metrics: Prometheus /metrics on http://{}:{}/metrics", chutes.metrics_ip, chutes.metrics_port)
    await manager.start(wait=False)  # Invoke answers 503 chute_unavailable until an instance is ready
    try:
        if autoscaler is not None:
            await autoscaler.start()
        await axon.start()
        await ctx.stop.wait()
    finally:
        await axon.stop()
        if autoscaler is not None:
            await autoscaler.stop()
        await manager.stop()


def main() -> None:
    """The ``canopy-miner`` console script (also ``python -m neurons.miner``)."""
    # CUDA numbers devices fastest-first by default; NVML (miner.inventory) in PCI bus order.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    run_neuron("miner", serve)


if __name__ == "__main__":
    main()
