"""pm2 entry point of the public API: ``canopy-api --netuid N --wallet.name ...``.

The API is run by a validator operator and signs its miner calls with the validator's
hotkey, so it boots like the validator (wallet, registration, ``run_neuron``). It opens
the validator's store (``--database_url`` or the wallet's SQLite file: keys, request logs
and organic invocations live there), a rate limiter (Redis when ``--redis_url`` is set,
else in-process), the miner directory (metagraph + Inventory every few seconds), and
serves ``api.app.build_app`` with uvicorn on ``--axon.ip``/``--axon.port``.

Gateway knobs are ``--api.*`` flags (or ``CANOPY_API__*`` variables): ``--api.rate_limit``
(the rules every key gets, default ``600/60s``), ``--api.timeout_s`` (60), ``--api.race``
(1) and ``--api.max_race`` (4), ``--api.max_body_bytes`` (1 MiB), ``--api.log_prompts``
(off), ``--api.refresh_s`` (5), ``--api.log_retention_days`` (30; request logs older are
deleted hourly, 0 keeps them), ``--api.idempotency_ttl_s`` (86400), ``--api.cold_start_wait_s``
(30: how long a call of a chute nobody hosts yet waits before 503 ``no_capacity``) and
``--api.chute_domain`` (unset; ``example.com`` serves each chute at ``OWNER-NAME.example.com``
too); ``--help`` lists them.

The chute routes (``/chutes``: ``canopy deploy`` and the chutes' public calls) read and write
the chute registry in the same store.
"""

from __future__ import annotations

import asyncio


import uvicorn
from fastapi import FastAPI

from api.app import ApiConfig, build_app as build_gateway, close_gateway
from api.moderation import from_settings as moderator_from_settings
from api.directory import MinerDirectory
from api.keys import KeyStore, RateRule
from api.limits import MemoryRateLimiter, RedisRateLimiter
from api.requestlog import retention_loop
from api.upstream import Upstream
from node.config import ApiSettings
from node.runtime import NeuronContext, run_neuron
from protocol.asgi import EmbeddedServer
from protocol.dendrite import Dendrite
from store.queries import ValidatorStore

#: Authenticated keys stay in memory this long: one SELECT less per request; edits made
#: elsewhere (canopy keys, another replica) take effect within it.
KEY_CACHE_S = 5.0


def gateway_config(settings: ApiSettings) -> ApiConfig:
    """The gateway's knobs from ``--api.*`` (validated by the settings model)."""
    return ApiConfig(
        global_rate_limits=tuple(RateRule.parse(rule) for rule in settings.rate_limit.split(",") if rule.strip()),
        request_timeout_s=settings.timeout_s, race=settings.race, max_race=settings.max_race,
        max_body_bytes=settings.max_body_bytes, log_prompts=settings.log_prompts,
        idempotency_ttl_s=settings.idempotency_ttl_s, cold_start_wait_s=settings.cold_start_wait_s,
        chute_domain=settings.chute_domain.strip().strip(".").lower() if settings.chute_domain else None,
    )


def build_app(ctx: NeuronContext, store: ValidatorStore, dendrite: Dendrite, directory: MinerDirectory,
              limiter, config: ApiConfig) -> FastAPI:
    async def chain_health() -> dict:
        graph = directory.graph
        return {"network": ctx.settings.network, "netuid": ctx.settings.netuid,
                "block": graph.block if graph else None, "uids": len(graph) if graph else 0,
                "serving_miners": len(graph.serving_miners()) if graph else 0}

    upstream = Upstream(dendrite, directory, store, timeout_s=config.request_timeout_s)
    return build_gateway(keys=KeyStore(store.engine, cache_s=KEY_CACHE_S), limiter=limiter, directory=directory, upstream=upstream,
                         store=store, config=config, health=chain_health,
                         moderator=moderator_from_settings(ctx.settings.api))


async def serve(ctx: NeuronContext) -> None:
    config = gateway_config(ctx.settings.api)
    store = await ValidatorStore.open(ctx.settings.store_url())
    await KeyStore(store.engine).create_tables()
    limiter = RedisRateLimiter(ctx.settings.redis_url) if ctx.settings.redis_url else MemoryRateLimiter()
    dendrite = Dendrite(ctx.wallet)
    directory = MinerDirectory(ctx.chain, ctx.settings.netuid, dendrite, store,
                               interval_s=ctx.settings.api.refresh_s)
    app = build_app(ctx, store, dendrite, directory, limiter, config)
    directory.start()
    retention = asyncio.create_task(retention_loop(store.engine, ctx.settings.api.log_retention_days,
                                                   idempotency=app.state.idempotency))
    server = EmbeddedServer(uvicorn.Config(app, host=ctx.settings.axon.ip, port=ctx.settings.axon.port,
                                           log_level="warning", lifespan="off"))  # run_neuron owns SIGINT/SIGTERM
    serving = asyncio.create_task(server.serve())
    try:
        await ctx.stop.wait()
    finally:
        server.should_exit = True
        await serving
        retention.cancel()
        await asyncio.gather(retention, return_exceptions=True)
        await close_gateway(app)  # queued rows written, credit leases given back
        await directory.stop()
        await dendrite.close()
        await limiter.close()
        await store.close()


def main() -> None:
    """The ``canopy-api`` console script (also ``python -m neurons.api``)."""
    run_neuron("api", serve)


if __name__ == "__main__":
    main()
