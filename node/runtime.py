"""Neuron start-up seam: settings, logging, chain, wallet and registration, then a clean run.

Each entry point (``canopy-miner`` / ``python -m neurons.miner``, the validator's, the
API's) starts through here: everything a neuron needs before it does its own work happens
here, and every way start-up can fail (bad flag, missing wallet, unregistered hotkey,
unknown subnet, unreachable chain) ends the process with one line that names the fix and a
non-zero exit code, which pm2 shows.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

import bittensor as bt
from loguru import logger

from node.config import NeuronSettings, load_settings_or_exit
from canopy.logging import setup_logging
from node.wallets import WalletError, open_wallet, require_registered
from chain import Chain, ChainError, connect


class StartupError(RuntimeError):
    """The neuron cannot start; the message says how to fix it."""


@dataclass
class NeuronContext:
    """What every neuron holds once it has started."""

    role: str
    settings: NeuronSettings
    chain: Chain
    wallet: bt.Wallet
    uid: int
    stop: asyncio.Event


async def boot(settings: NeuronSettings, role: str) -> NeuronContext:
    """Connect to the chain, open the wallet and check its hotkey is registered."""
    wallet_path = settings.wallet.path
    assert wallet_path is not None, "NeuronSettings fills in the wallets folder"
    chain = connect(settings.network, settings.devnet)
    try:
        wallet = open_wallet(settings.wallet.name, settings.wallet.hotkey, wallet_path, network=settings.network)
        uid = await require_registered(chain, wallet, settings.netuid, network=settings.network)
    except (WalletError, ChainError) as error:
        await chain.close()
        raise StartupError(str(error)) from None
    logger.info(
        "{} uid {} hotkey {} on netuid {} ({})", role, uid, wallet.hotkey.ss58_address, settings.netuid, settings.network
    )
    return NeuronContext(role=role, settings=settings, chain=chain, wallet=wallet, uid=uid, stop=asyncio.Event())


def run_neuron(role: str, main: Callable[[NeuronContext], Awaitable[None]], argv: Sequence[str] | None = None) -> None:
    """Parse flags, boot, and run ``main`` until it returns or SIGINT/SIGTERM sets ``ctx.stop``."""
    settings = load_settings_or_exit(sys.argv[1:] if argv is None else argv, prog=role)
    setup_logging(settings.logging, role)

    async def lifecycle() -> None:
        ctx = await boot(settings, role)
        # The start-up heap (bittensor, FastAPI, pydantic schemas) never dies: keep it out
        # of the collector's scans, which otherwise add 30-60 ms pauses (bench/protocol.py).
        gc.collect()
        gc.freeze()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, ctx.stop.set)
        try:
            await main(ctx)
        finally:
            await ctx.chain.close()
            logger.info("{} stopped", role)

    try:
        import uvloop

        uvloop.run(lifecycle())
    except StartupError as error:
        print(f"{role}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
