"""pm2 entry point of the validator: ``canopy-validator --netuid N --wallet.name ...``.

Boots like every neuron (``node.runtime``: flags, wallet, registration), opens the store
(``--database_url``; default a SQLite WAL file in ``$CANOPY_HOME``), restores the scores,
verification schedule and last weights from it, then runs a ``validator.loop.Validator``
step every ``--validator.step_s`` until SIGINT/SIGTERM, and announces the chute registry to
the miners every ``--validator.announce_s`` (``validator.announce``). Prometheus ``/metrics`` is served
on ``--validator.metrics_port`` (off by default) and the scores of every step go to a wandb
run (``--wandb.mode offline`` by default).
"""

from __future__ import annotations

import asyncio
import time


from loguru import logger

from canopy import __spec_version__
from node.runtime import NeuronContext, run_neuron
from protocol.dendrite import Dendrite
from protocol.graval.devices import load_gpu_table
from validator.loop import Validator
from validator.metrics import ScoreTracker, ValidatorMetrics
from store.queries import ValidatorStore


async def serve(ctx: NeuronContext) -> None:
    settings = ctx.settings
    store = await ValidatorStore.open(settings.store_url())
    metrics = ValidatorMetrics()
    if settings.validator.metrics_port:
        metrics.serve(settings.validator.metrics_port, settings.validator.metrics_ip)
    tracker = ScoreTracker(settings.wandb, name=f"validator-{ctx.wallet.hotkey.ss58_address[:8]}-netuid{settings.netuid}",
                           config={"netuid": settings.netuid, "network": settings.network, "version": __spec_version__,
                                   "hotkey": ctx.wallet.hotkey.ss58_address, **settings.scoring.model_dump()})
    try:
        async with Dendrite(ctx.wallet) as dendrite:
            validator = Validator(wallet=ctx.wallet, chain=ctx.chain, settings=settings, store=store, dendrite=dendrite,
                                  table=load_gpu_table(), metrics=metrics, tracker=tracker)
            await validator.restore()
            announcing = asyncio.create_task(validator.announce_forever(ctx.stop), name="announce")
            try:
                while not ctx.stop.is_set():
                    started = time.monotonic()
                    try:
                        await validator.step()
                    except Exception as error:  # noqa: BLE001 - one bad step (chain hiccup) must not end the validator
                        logger.opt(exception=error).error("validator step failed; retrying next step")
                    wait = max(0.0, settings.validator.step_s - (time.monotonic() - started))
                    try:
                        await asyncio.wait_for(ctx.stop.wait(), timeout=wait)
                    except asyncio.TimeoutError:
                        pass
            finally:
                announcing.cancel()
                await asyncio.gather(announcing, return_exceptions=True)
                await validator.close()
    finally:
        tracker.close()
        metrics.close()
        await store.close()


def main() -> None:
    """The ``canopy-validator`` console script (also ``python -m neurons.validator``)."""
    run_neuron("validator", serve)


if __name__ == "__main__":
    main()
