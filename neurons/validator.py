"""pm2 entry point of the validator: ``python neurons/validator.py --netuid N --wallet.name ...``.

Today's loop: sync the metagraph, ping every serving miner over the signed protocol, and
GraVal-verify the devices of every miner that is due (new miners at once, then about
every ``--graval.reverify_s``, failures retried with backoff), storing each device's
result in the validator store. Work measurement, scoring and weights arrive with the
validator issue and plug into this loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loguru import logger  # noqa: E402

from canopy.config import canopy_home  # noqa: E402
from canopy.neuron import NeuronContext, run_neuron  # noqa: E402
from protocol.dendrite import Dendrite  # noqa: E402
from protocol.graval.devices import load_gpu_table  # noqa: E402
from protocol.synapse import Ping  # noqa: E402
from validator.graval.schedule import ReverifySchedule  # noqa: E402
from validator.graval.session import GravalVerifier  # noqa: E402
from validator.store import ValidatorStore  # noqa: E402

STEP_SECONDS = 12.0


def database_url(ctx: NeuronContext) -> str:
    if ctx.settings.database_url:
        return ctx.settings.database_url
    path = canopy_home() / f"validator-{ctx.settings.wallet.name}-{ctx.settings.wallet.hotkey}.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{path}"


async def verify_due_miners(verifier: GravalVerifier, schedule: ReverifySchedule, store: ValidatorStore, miners: list) -> None:
    now = time.time()
    due = [miner for miner in miners if miner.hotkey in set(schedule.due([m.hotkey for m in miners], now))]
    if not due:
        return
    rounds = await asyncio.gather(*(verifier.verify_miner(miner) for miner in due))
    for miner, results in zip(due, rounds):
        passed = bool(results) and all(result.ok for result in results)
        schedule.record(miner.hotkey, passed, time.time())
        if results:
            await store.record_device_results(results)
        verified = sum(result.ok for result in results)
        logger.info("graval: uid {} verified {}/{} devices{}", miner.uid, verified, len(results),
                    "" if passed else f" ({', '.join(sorted({r.reason for r in results if not r.ok})) or 'no inventory'})")


async def main(ctx: NeuronContext) -> None:
    graval = ctx.settings.graval
    store = await ValidatorStore.open(database_url(ctx))
    schedule = ReverifySchedule(interval_s=graval.reverify_s, retry_s=graval.retry_s)
    try:
        async with Dendrite(ctx.wallet) as dendrite:
            verifier = GravalVerifier(dendrite, load_gpu_table(), allow_cpu=graval.allow_cpu)
            while not ctx.stop.is_set():
                graph = await ctx.chain.metagraph(ctx.settings.netuid)
                miners = [m for m in graph.serving_miners() if m.hotkey != ctx.wallet.hotkey.ss58_address]
                schedule.forget({m.hotkey for m in miners})
                results = await dendrite.query(miners, Ping(), timeout=5.0)
                answered = [f"{m.uid}:{r.latency_s * 1000:.0f}ms" for m, r in zip(miners, results) if r.ok]
                failed = [f"{m.uid}:{r.status}" for m, r in zip(miners, results) if not r.ok]
                logger.info("block {}: {} miners serving, answered {} failed {}", graph.block, len(miners), answered, failed)
                await verify_due_miners(verifier, schedule, store, [m for m, r in zip(miners, results) if r.ok])
                try:
                    await asyncio.wait_for(ctx.stop.wait(), timeout=STEP_SECONDS)
                except asyncio.TimeoutError:
                    pass
    finally:
        await store.close()


if __name__ == "__main__":
    run_neuron("validator", main)
