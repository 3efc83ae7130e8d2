"""``./run.sh demo``: a whole local subnet on the embedded devnet, in one command.

Callers: ``run.sh demo`` (``python -m canopy.demo``) and the end-to-end test. It creates
a fresh devnet under ``$CANOPY_HOME/demo``, makes the wallets (owner/validator and three
miners), registers and stakes them, starts the miners as real processes
(``neurons/miner.py``), waits for their axons on chain, pings each over the signed
protocol from the validator's hotkey, GraVal-verifies their CPU pseudo-devices, sets
weights by verified devices, waits for the epoch and prints the metagraph. ``--once``
exits after printing; otherwise it serves until Ctrl-C. The chute, scoring and API
stages plug in here as their issues land.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import typer
from loguru import logger
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from canopy.cli.tables import metagraph_table, short
from canopy.config import canopy_home
from canopy.wallets import coldkey_ss58, create_devnet_wallet
from chain.devnet import DevnetChain, DevnetLedger
from protocol.dendrite import Dendrite
from protocol.graval.devices import load_gpu_table
from protocol.synapse import Ping
from validator.graval.session import GravalVerifier

REPO = Path(__file__).resolve().parent.parent
NETUID = 1
MINERS = ("miner1", "miner2", "miner3")
MINER_DEVICES = (1, 2, 1)  # CPU pseudo-devices each miner offers
DEVICE_MEMORY_MB = 16  # per device: 9 matrices of 1024 x 1024 and 144 access steps
VALIDATOR_STAKE = 1000.0

console = Console()


@dataclass
class DemoPaths:
    home: Path

    @property
    def chain(self) -> Path:
        return self.home / "devnet.sqlite"

    @property
    def wallets(self) -> Path:
        return self.home / "wallets"

    @property
    def logs(self) -> Path:
        return self.home / "logs"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fresh_devnet(paths: DemoPaths, block_time: float, tempo: int) -> DevnetLedger:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{paths.chain}{suffix}").unlink(missing_ok=True)
    ledger = DevnetLedger(paths.chain, block_time=block_time)
    ledger.create_subnet(NETUID, tempo=tempo, weights_rate_limit=2, stake_threshold=100.0)
    return ledger


def _start_miner(paths: DemoPaths, name: str, port: int, devices: int) -> subprocess.Popen:
    paths.logs.mkdir(parents=True, exist_ok=True)
    log = open(paths.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    command = [
        sys.executable, str(REPO / "neurons" / "miner.py"), "--network", "devnet", "--netuid", str(NETUID),
        "--wallet.name", name, "--wallet.hotkey", "default", "--wallet.path", str(paths.wallets),
        "--devnet.path", str(paths.chain), "--axon.ip", "127.0.0.1", "--axon.port", str(port),
        "--graval.cpu_devices", str(devices), "--graval.cpu_memory_mb", str(DEVICE_MEMORY_MB),
    ]
    env = {**os.environ, "CANOPY_HOME": str(paths.home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()


async def _wait_for_axons(chain: DevnetChain, processes: list[subprocess.Popen], progress: Progress, timeout: float) -> None:
    task = progress.add_task("miners serving on chain", total=len(processes))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"a miner exited with code {process.returncode}; see {process.args[1]} logs")
        serving = len((await chain.metagraph(NETUID)).serving_miners())
        progress.update(task, completed=serving)
        if serving >= len(processes):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"miners did not publish their axons within {timeout:.0f}s")


def _devices_table(graph, rounds) -> Table:
    table = Table(title="GraVal: devices claimed and verified (CPU pseudo-devices on the devnet)", header_style="bold")
    for column in ("UID", "HOTKEY", "DEVICE", "RESULT", "PROVE", "THROUGHPUT"):
        table.add_column(column)
    for neuron, results in zip(graph.serving_miners(), rounds):
        for result in results:
            status = "[green]verified[/]" if result.ok else f"[red]{result.reason}[/]"
            table.add_row(str(neuron.uid), short(neuron.hotkey), result.uuid, status, f"{result.elapsed_s:.2f} s",
                          f"{result.throughput_macs_s / 1e9:.1f} GMAC/s")
    return table


def _ping_table(graph, results) -> Table:
    table = Table(title="Signed Ping from the validator (btauth/1)", header_style="bold")
    for column in ("UID", "HOTKEY", "STATUS", "LATENCY"):
        table.add_column(column)
    for neuron, result in zip(graph.serving_miners(), results):
        status = "[green]ok[/]" if result.ok else f"[red]{result.status}[/]"
        table.add_row(str(neuron.uid), short(neuron.hotkey), status, f"{result.latency_s * 1000:.1f} ms")
    return table


async def _run(paths: DemoPaths, once: bool, block_time: float, tempo: int) -> int:
    processes: list[subprocess.Popen] = []
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            step = progress.add_task("devnet, wallets, registration", total=3)
            ledger = _fresh_devnet(paths, block_time, tempo)
            chain = DevnetChain(paths.chain, ledger=ledger)
            progress.advance(step)
            validator = create_devnet_wallet("owner", "validator", paths.wallets)
            miners = [create_devnet_wallet(name, "default", paths.wallets) for name in MINERS]
            progress.advance(step)
            for wallet in [validator, *miners]:
                ledger.register(NETUID, wallet.hotkey.ss58_address, coldkey_ss58(wallet))
            ledger.add_stake(NETUID, validator.hotkey.ss58_address, VALIDATOR_STAKE)
            progress.advance(step)

            processes = [_start_miner(paths, name, _free_port(), devices) for name, devices in zip(MINERS, MINER_DEVICES)]
            await _wait_for_axons(chain, processes, progress, timeout=90)

            graph = await chain.metagraph(NETUID)
            async with Dendrite(validator) as dendrite:
                results = await dendrite.query(graph.serving_miners(), Ping(), timeout=5.0)
                if not any(result.ok for result in results):
                    raise RuntimeError("no miner answered the signed Ping")
                graval_task = progress.add_task("GraVal challenges", total=1)
                verifier = GravalVerifier(dendrite, load_gpu_table(), allow_cpu=True)
                rounds = await asyncio.gather(*(verifier.verify_miner(miner) for miner in graph.serving_miners()))
                progress.update(graval_task, completed=1)
            verified = {n.uid: sum(r.ok for r in found) for n, found in zip(graph.serving_miners(), rounds)}
            alive = [uid for uid, count in verified.items() if count]
            if not alive:
                raise RuntimeError("no miner had a verified device")

            weights_task = progress.add_task("weights by verified devices, waiting for the epoch", total=1)
            hyper = await chain.hyperparameters(NETUID)
            await asyncio.sleep(max(0.0, (hyper.weights_rate_limit - (await chain.blocks_since_last_update(NETUID, 0))) * block_time))
            submission = await chain.set_weights(validator, NETUID, alive, [float(verified[uid]) for uid in alive])
            while (await chain.metagraph(NETUID)).by_uid(alive[0]).incentive == 0:
                await asyncio.sleep(block_time / 2)
            progress.update(weights_task, completed=1)

        console.print(_ping_table(graph, results))
        console.print(_devices_table(graph, rounds))
        console.print(f"Weights set at block {submission.block}: " + ", ".join(
            f"uid {uid} = {weight:.3f}" for uid, weight in zip(submission.uids, submission.weights)))
        console.print(metagraph_table(await chain.metagraph(NETUID), width=console.width))
        console.print(f"Devnet: {paths.chain}  ·  logs: {paths.logs}  ·  inspect with "
                      f"[bold]CANOPY_HOME={paths.home} ./run.sh canopy devnet metagraph[/]")
        if once:
            return 0
        console.print("Serving until Ctrl-C …")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        return 0
    finally:
        _stop(processes)


def main(
    once: bool = typer.Option(False, "--once", help="Exit (code 0) right after printing, for scripts and CI."),
    block_time: float = typer.Option(1.0, "--block-time", min=0.1, max=12, help="Seconds per devnet block."),
    tempo: int = typer.Option(5, "--tempo", min=1, help="Blocks between epochs."),
) -> None:
    """Run a local Canopy subnet on the devnet and show it working."""
    paths = DemoPaths(canopy_home() / "demo")
    logger.remove()  # the tables tell the story; neuron logs are in the logs folder
    logger.add(sys.stderr, level="WARNING")
    try:
        code = asyncio.run(_run(paths, once, block_time, tempo))
    except RuntimeError as error:
        console.print(f"[red]demo failed:[/] {error} (logs in {paths.logs})")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


if __name__ == "__main__":
    typer.run(main)
