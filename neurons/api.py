"""pm2 entry point of the public API: ``python neurons/api.py --netuid N --wallet.name ...``.

The API is run by a validator operator and signs its miner calls with the validator's
hotkey, so it boots like the validator (wallet, registration). Today it serves
``GET /health`` (chain block, metagraph size, serving miners); the OpenAI-compatible
routes, keys, credits and limits arrive with the API issue.
"""

from __future__ import annotations

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from canopy.neuron import NeuronContext, run_neuron  # noqa: E402


def build_app(ctx: NeuronContext) -> FastAPI:
    app = FastAPI(title="Canopy API", version="0.1.0")

    @app.get("/health")
    async def health() -> dict:
        graph = await ctx.chain.metagraph(ctx.settings.netuid)
        return {
            "status": "ok",
            "network": ctx.settings.network,
            "netuid": ctx.settings.netuid,
            "block": graph.block,
            "uids": len(graph),
            "serving_miners": len(graph.serving_miners()),
        }

    return app


async def main(ctx: NeuronContext) -> None:
    config = uvicorn.Config(
        build_app(ctx), host=ctx.settings.axon.ip, port=ctx.settings.axon.port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # run_neuron owns SIGINT/SIGTERM
    serving = asyncio.create_task(server.serve())
    await ctx.stop.wait()
    server.should_exit = True
    await serving


if __name__ == "__main__":
    run_neuron("api", main)
