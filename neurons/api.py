"""pm2 entry point of the public API: ``python neurons/api.py --netuid N --wallet.name ...``.

The API is run by a validator operator and signs its miner calls with the validator's
hotkey, so it boots like the validator (wallet, registration, ``run_neuron``). It opens
the validator's store (``--database_url`` or the wallet's SQLite file: keys, request logs
and organic invocations live there), a rate limiter (Redis when ``--redis_url`` is set,
else in-process), the miner directory (metagraph + Inventory every few seconds), and
serves ``api.app.build_app`` with uvicorn on ``--axon.ip``/``--axon.port``.

Gateway knobs, from the environment:

- ``CANOPY_API_RATE_LIMIT``: the default rules every key gets, comma-separated
  (default ``600/60s``);
- ``CANOPY_API_TIMEOUT_S``: per-request timeout of a miner call (default 60);
- ``CANOPY_API_RACE``: how many miners to race by default (default 1; a request may ask
  for up to ``CANOPY_API_MAX_RACE``, default 4, with ``x-canopy-race``);
- ``CANOPY_API_MAX_BODY_BYTES``: largest request body (default 1 MiB);
- ``CANOPY_API_LOG_PROMPTS``: ``1`` keeps prompts and answers in the request log (off);
- ``CANOPY_API_REFRESH_S``: seconds between miner directory refreshes (default 5).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Mapping

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from api.app import ApiConfig, build_app as build_gateway  # noqa: E402
from api.directory import MinerDirectory  # noqa: E402
from api.keys import KeyStore, RateRule  # noqa: E402
from api.limits import MemoryRateLimiter, RedisRateLimiter  # noqa: E402
from api.upstream import Upstream  # noqa: E402
from canopy.neuron import NeuronContext, run_neuron  # noqa: E402
from protocol.dendrite import Dendrite  # noqa: E402
from validator.store import ValidatorStore  # noqa: E402


def config_from_env(env: Mapping[str, str] = os.environ) -> ApiConfig:
    """The ``CANOPY_API_*`` knobs (see the module docstring)."""
    rules = env.get("CANOPY_API_RATE_LIMIT", "600/60s")
    return ApiConfig(
        global_rate_limits=tuple(RateRule.parse(rule) for rule in rules.split(",") if rule.strip()),
        request_timeout_s=float(env.get("CANOPY_API_TIMEOUT_S", "60")),
        race=int(env.get("CANOPY_API_RACE", "1")),
        max_race=int(env.get("CANOPY_API_MAX_RACE", "4")),
        max_body_bytes=int(env.get("CANOPY_API_MAX_BODY_BYTES", str(1 << 20))),
        log_prompts=env.get("CANOPY_API_LOG_PROMPTS", "").lower() in ("1", "true", "yes"),
    )


def build_app(ctx: NeuronContext, store: ValidatorStore, dendrite: Dendrite, directory: MinerDirectory,
              limiter, config: ApiConfig) -> FastAPI:
    async def chain_health() -> dict:
        graph = directory.graph
        return {"network": ctx.settings.network, "netuid": ctx.settings.netuid,
                "block": graph.block if graph else None, "uids": len(graph) if graph else 0,
                "serving_miners": len(graph.serving_miners()) if graph else 0}

    upstream = Upstream(dendrite, directory, store, timeout_s=config.request_timeout_s)
    return build_gateway(keys=KeyStore(store.engine), limiter=limiter, directory=directory, upstream=upstream,
                         store=store, config=config, health=chain_health)


async def main(ctx: NeuronContext) -> None:
    config = config_from_env()
    store = await ValidatorStore.open(ctx.settings.store_url())
    await KeyStore(store.engine).create_tables()
    limiter = RedisRateLimiter(ctx.settings.redis_url) if ctx.settings.redis_url else MemoryRateLimiter()
    dendrite = Dendrite(ctx.wallet)
    directory = MinerDirectory(ctx.chain, ctx.settings.netuid, dendrite, store,
                               interval_s=float(os.environ.get("CANOPY_API_REFRESH_S", "5")))
    app = build_app(ctx, store, dendrite, directory, limiter, config)
    directory.start()
    server = uvicorn.Server(uvicorn.Config(app, host=ctx.settings.axon.ip, port=ctx.settings.axon.port,
                                           log_level="warning", lifespan="off"))
    server.install_signal_handlers = lambda: None  # run_neuron owns SIGINT/SIGTERM
    serving = asyncio.create_task(server.serve())
    try:
        await ctx.stop.wait()
    finally:
        server.should_exit = True
        await serving
        await app.state.request_log.drain()
        await app.state.upstream.drain()
        await directory.stop()
        await dendrite.close()
        await limiter.close()
        await store.close()


if __name__ == "__main__":
    run_neuron("api", main)
