"""Benchmark of the wire (protocol/): signed round trips against an unsigned baseline, and fan-out.

Run from the repo root: ``.venv/bin/python bench/protocol.py [--n 2000] [--fanout 256] [--delay 0.5]``.
Servers run in child processes (this script re-invoked with
``--role``), the client in this one, both on uvloop, all on 127.0.0.1:

- ``seq_rps``: sequential Echo calls through ``Dendrite.call`` to one ``Axon`` (signing,
  verification, blacklist, nonce store, admission, pydantic both ways);
- ``baseline_rps``: the same loop with the same aiohttp client settings against a plain
  Starlette echo route on the same uvicorn/uvloop/httptools stack, unsigned (the
  fastest plain baseline; a FastAPI route with a pydantic body is reported alongside);
- ``fanout_total_s``: one ``Dendrite.query`` to ``--fanout`` axons on distinct ports
  (spread over ``--server-procs`` processes) whose handlers each sleep ``--delay``
  seconds, on warm connections: the median of ``--rounds`` such queries (worst and best
  reported too). The first query, which also opens every connection, is ``fanout_cold_s``.

The rates are medians of ``--repeats`` alternating runs of ``--n`` calls each. Every
process calls ``gc.freeze()`` once its start-up is done, as a long-running neuron
should: the start-up heap (bittensor, FastAPI, pydantic schemas) is then never rescanned
by the collector, which otherwise adds 30-60 ms full collections at random moments.
``--no-gc-freeze`` measures without it.

Prints a rich table, then as its last line one JSON object with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

# This file is named like the package it measures: drop bench/ from the import path (Python
# puts the script's folder first) and put the repo root first, so `protocol` is the package.
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT)] + [entry for entry in sys.path if Path(entry or ".").resolve() not in (HERE, ROOT)]

import aiohttp  # noqa: E402
import bittensor as bt  # noqa: E402
import uvloop  # noqa: E402

from bench.report import print_last_line, print_table, verdict  # noqa: E402
from protocol.options import AxonSettings  # noqa: E402
from node.wallets import create_devnet_wallet  # noqa: E402
from chain.base import Chain, Hyperparameters, Metagraph, Neuron, WeightsSubmission  # noqa: E402
from protocol.dendrite import Dendrite, Target  # noqa: E402
from protocol.synapse import Echo, EchoResponse  # noqa: E402

NETUID = 1
TARGETS = {"seq_rps": 1000.0, "ratio": 0.5, "fanout_over_delay": 1.2}


class BenchChain(Chain):
    """A fixed two-neuron metagraph: the validator (client) and the miner (every axon)."""

    network = "bench"

    def __init__(self, validator: bt.Wallet, miner: bt.Wallet) -> None:
        neurons = (
            Neuron(0, miner.hotkey.ss58_address, miner.coldkeypub.ss58_address, 0.0, False, None),
            Neuron(1, validator.hotkey.ss58_address, validator.coldkeypub.ss58_address, 1000.0, True, None),
        )
        self.graph = Metagraph(NETUID, 1, neurons)

    async def block(self) -> int:
        return 1

    async def metagraph(self, netuid: int) -> Metagraph:
        return self.graph

    async def hyperparameters(self, netuid: int) -> Hyperparameters:
        return Hyperparameters(tempo=360, weights_rate_limit=100)

    async def set_weights(self, wallet, netuid, uids, weights, *, version_key=0) -> WeightsSubmission:
        return WeightsSubmission(1, tuple(uids), tuple(weights))

    async def serve_axon(self, wallet: bt.Wallet, netuid: int, ip: str, port: int) -> None:
        return None

    async def register(self, wallet: bt.Wallet, netuid: int) -> int:
        return 0


def wallets(path: str) -> tuple[bt.Wallet, bt.Wallet]:
    return create_devnet_wallet("bench-validator", "default", path), create_devnet_wallet("bench-miner", "default", path)


def free_ports(count: int) -> list[int]:
    """Distinct free ports (held open together while choosing, so none repeats)."""
    import socket

    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


# --- server roles (child processes) ---------------------------------------------------


async def start_baselines() -> tuple[list, dict[str, int]]:
    import uvicorn
    from fastapi import FastAPI
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def raw_echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/json")

    fastapi_app = FastAPI()

    @fastapi_app.post("/echo")
    async def model_echo(body: Echo) -> EchoResponse:
        return EchoResponse(text=body.text)

    servers, ports = [], {}
    free = free_ports(2)
    for name, app in (("starlette", Starlette(routes=[Route("/echo", raw_echo, methods=["POST"])])), ("fastapi", fastapi_app)):
        ports[name] = free.pop()
        config = uvicorn.Config(app, host="127.0.0.1", port=ports[name], http="httptools", lifespan="off",
                                log_level="warning", access_log=False, server_header=False, date_header=False)
        server = uvicorn.Server(config)
        server.capture_signals = lambda: _nullcontext()  # type: ignore[method-assign]
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        servers.append((server, task))
    return servers, ports


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


async def serve(role: str, wallet_path: str, count: int, delay: float, freeze: bool) -> None:
    from loguru import logger

    from protocol.axon import Axon

    logger.remove()
    validator, miner = wallets(wallet_path)
    chain = BenchChain(validator, miner)

    async def echo(request: Echo, caller) -> EchoResponse:
        return EchoResponse(text=request.text)

    async def slow_echo(request: Echo, caller) -> EchoResponse:
        await asyncio.sleep(delay)
        return EchoResponse(text=request.text)

    axons = [Axon(miner, chain, NETUID, AxonSettings(ip="127.0.0.1", port=port), metagraph_refresh_s=3600)
             for port in free_ports(count)]
    for axon in axons:
        axon.attach(Echo, echo if role == "echo" else slow_echo)
    await asyncio.gather(*(axon.start(publish=False) for axon in axons))
    baselines, ports = [], {}
    ports["axons"] = [axon.port for axon in axons]
    if role == "echo":
        baselines, baseline_ports = await start_baselines()
        ports.update(baseline_ports)
    if freeze:
        gc.freeze()
    print(json.dumps(ports), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await asyncio.gather(*(axon.stop() for axon in axons))
    for server, task in baselines:
        server.should_exit = True
        await task


class Child:
    """A server role in a child process; its ports arrive as one JSON line on stdout."""

    def __init__(self, role: str, wallet_path: str, *, count: int = 1, delay: float = 0.0, freeze: bool = True) -> None:
        command = [sys.executable, __file__, "--role", role, "--wallets", wallet_path, "--count", str(count), "--delay", str(delay)]
        self.process = subprocess.Popen(
            command + ([] if freeze else ["--no-gc-freeze"]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
        )
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {role} server process failed to start (exit {self.process.wait()})")
        self.ports = json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


# --- client measurements ---------------------------------------------------------------


async def sequential_signed(dendrite, target, n: int, warmup: int) -> float:
    synapse = Echo(text="hello canopy")
    for _ in range(warmup):
        await dendrite.call(target, synapse, timeout=5)
    started = time.perf_counter()
    for _ in range(n):
        result = await dendrite.call(target, synapse, timeout=5)
        if not result.ok:
            raise RuntimeError(f"signed echo failed: {result.status} {result.error!r}")
    return n / (time.perf_counter() - started)


async def sequential_plain(url: str, n: int, warmup: int) -> float:
    connector = aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=60)
    body = Echo(text="hello canopy").to_json()
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)) as session:

        async def once() -> None:
            async with session.post(url, data=body, headers=headers, timeout=timeout) as response:
                EchoResponse.model_validate_json(await response.read())

        for _ in range(warmup):
            await once()
        started = time.perf_counter()
        for _ in range(n):
            await once()
        return n / (time.perf_counter() - started)


async def measure(args: argparse.Namespace, wallet_path: str) -> dict:
    validator, miner = wallets(wallet_path)
    hotkey = miner.hotkey.ss58_address
    results: dict = {"n": args.n, "repeats": args.repeats, "gc_freeze": args.gc_freeze}
    runs: dict[str, list[float]] = {"baseline_rps": [], "seq_rps": [], "baseline_fastapi_rps": []}
    echo = Child("echo", wallet_path, freeze=args.gc_freeze)
    try:
        async with Dendrite(validator) as dendrite:
            target = Target(hotkey, f"http://127.0.0.1:{echo.ports['axons'][0]}")
            for _ in range(args.repeats):
                runs["baseline_rps"].append(await sequential_plain(f"http://127.0.0.1:{echo.ports['starlette']}/echo", args.n, args.warmup))
                runs["seq_rps"].append(await sequential_signed(dendrite, target, args.n, args.warmup))
                fastapi_url = f"http://127.0.0.1:{echo.ports['fastapi']}/echo"
                runs["baseline_fastapi_rps"].append(await sequential_plain(fastapi_url, args.n, args.warmup))
    finally:
        echo.close()
    results.update({name: statistics.median(values) for name, values in runs.items()})
    results["ratio"] = results["seq_rps"] / results["baseline_rps"]
    results["ratio_vs_fastapi"] = results["seq_rps"] / results["baseline_fastapi_rps"]

    procs = max(1, min(args.server_procs, args.fanout))
    shares = [args.fanout // procs + (1 if i < args.fanout % procs else 0) for i in range(procs)]
    children = [Child("slow", wallet_path, count=share, delay=args.delay, freeze=args.gc_freeze) for share in shares]
    results.update({"fanout_n": args.fanout, "fanout_delay_s": args.delay, "fanout_server_procs": procs})
    try:
        targets = [Target(hotkey, f"http://127.0.0.1:{port}") for child in children for port in child.ports["axons"]]
        assert len({t.url for t in targets}) == args.fanout, "fan-out targets must be distinct ip:port"
        timeout = args.delay * 4 + 5
        async with Dendrite(validator) as dendrite:
            started = time.perf_counter()
            answers = await dendrite.query(targets, Echo(text="fan"), timeout=timeout)
            results["fanout_cold_s"] = time.perf_counter() - started
            oks, times = [sum(r.ok for r in answers)], []
            for _ in range(args.rounds):
                started = time.perf_counter()
                answers = await dendrite.query(targets, Echo(text="fan"), timeout=timeout)
                times.append(time.perf_counter() - started)
                oks.append(sum(r.ok for r in answers))
    finally:
        for child in children:
            child.close()
    results["fanout_total_s"] = statistics.median(times)
    results["fanout_best_s"], results["fanout_worst_s"] = min(times), max(times)
    results["fanout_ok_min"] = min(oks)
    results["fanout_over_delay"] = results["fanout_total_s"] / args.delay if args.delay > 0 else None
    return results


def report(results: dict) -> None:
    over = results["fanout_over_delay"]
    checks = {
        "seq_rps": (f">= {TARGETS['seq_rps']:g}", results["seq_rps"] >= TARGETS["seq_rps"]),
        "ratio": (f">= {TARGETS['ratio']:g}", results["ratio"] >= TARGETS["ratio"]),
        "fanout_over_delay": (f"<= {TARGETS['fanout_over_delay']:g}", None if over is None else over <= TARGETS["fanout_over_delay"]),
        "fanout_ok_min": (f"= {results['fanout_n']}", results["fanout_ok_min"] == results["fanout_n"]),
    }
    verdict(results, {**TARGETS, "fanout_ok_min": results["fanout_n"]}, {name: met for name, (_, met) in checks.items()})
    print_table("canopy wire benchmark (loopback, server in child processes)", results, checks)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="sequential round trips measured (after warm-up)")
    parser.add_argument("--warmup", type=int, default=300, help="round trips before measuring")
    parser.add_argument("--fanout", type=int, default=256, help="axons in the fan-out query")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds each fan-out handler sleeps")
    parser.add_argument("--server-procs", type=int, default=2, help="processes hosting the fan-out axons")
    parser.add_argument("--rounds", type=int, default=5, help="warm fan-out queries (the median is reported)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each sequential loop")
    parser.add_argument("--no-gc-freeze", dest="gc_freeze", action="store_false", help="leave the start-up heap to the collector")
    parser.add_argument("--role", choices=("echo", "slow"), help=argparse.SUPPRESS)
    parser.add_argument("--wallets", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        uvloop.run(serve(args.role, args.wallets, args.count, args.delay, args.gc_freeze))
        return
    with tempfile.TemporaryDirectory(prefix="canopy-bench-") as wallet_path:
        wallets(wallet_path)
        if args.gc_freeze:
            gc.freeze()
        results = uvloop.run(measure(args, wallet_path))
    report(results)
    print_last_line(results, digits=4)


if __name__ == "__main__":
    main()
