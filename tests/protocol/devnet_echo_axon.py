"""A miner-like process for the wire integration test: an Echo axon on the devnet.

Run as a script (``python tests/protocol/devnet_echo_axon.py --devnet FILE ...``). Opens the
devnet chain file, opens the miner wallet, starts an ``Axon`` that publishes its address on the
devnet and takes its metagraph from it, prints ``READY <port>`` and serves until stdin
closes or SIGTERM arrives.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import uvloop  # noqa: E402

from protocol.options import AxonSettings  # noqa: E402
from node.wallets import open_wallet  # noqa: E402
from chain.devnet import DevnetChain  # noqa: E402
from protocol.axon import Axon, Caller  # noqa: E402
from protocol.synapse import Echo, EchoResponse  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    wallet = open_wallet(args.wallet_name, "default", args.wallet_path)
    chain = DevnetChain(args.devnet)
    settings = AxonSettings(ip="127.0.0.1", port=args.port, external_ip="127.0.0.1", min_stake=args.min_stake)
    axon = Axon(wallet, chain, args.netuid, settings, metagraph_refresh_s=0.5)

    async def echo(request: Echo, caller: Caller) -> EchoResponse:
        return EchoResponse(text=f"{request.text} (from uid {caller.uid})")

    axon.attach(Echo, echo)
    await axon.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    stdin_closed.add_done_callback(lambda _: stop.set())
    print(f"READY {axon.port}", flush=True)
    await stop.wait()
    await axon.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--devnet", required=True)
    parser.add_argument("--netuid", type=int, required=True)
    parser.add_argument("--wallet-path", required=True)
    parser.add_argument("--wallet-name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--min-stake", type=float, default=0.0)
    uvloop.run(main(parser.parse_args()))
