"""``./run.sh demo``: a whole local subnet on the embedded devnet, in one command.

Callers: ``run.sh demo`` (``python -m canopy.demo``) and the end-to-end test. It creates
a fresh devnet under ``$CANOPY_HOME/demo``, makes the wallets (owner/validator and three
miners), registers and stakes them, starts the miners as real processes
(``neurons/miner.py``; each hosts the echo chute, two the SmolLM2 chute), waits for their
axons on chain, pings each over the signed protocol from the validator's hotkey, then runs
the validator's own steps (``validator.loop``: GraVal rounds on the CPU pseudo-devices, a
synthetic round, scoring) in-process until it sets weights, streams a chat answer from
the LLM chute, and prints the devices, chutes, scores, weights and the metagraph after
the epoch. ``--once`` exits after printing; otherwise it serves until Ctrl-C. The API
stage plugs in here with its issue.
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
from canopy.chains import SSEDecoder
from canopy.chute import chute_id
from canopy.templates.llm import BUNDLED_MODEL, _default_name
from canopy.templates.model_files import models_root
from protocol.chutes import Invoke
from protocol.dendrite import Dendrite
from protocol.graval.synapses import Inventory
from protocol.graval.devices import load_gpu_table
from protocol.synapse import Ping
from canopy.config import load_settings
from validator.loop import Validator
from validator.store import ValidatorStore

REPO = Path(__file__).resolve().parent.parent
NETUID = 1
MINERS = ("miner1", "miner2", "miner3")
MINER_DEVICES = (1, 2, 1)  # CPU pseudo-devices each miner offers
LLM_MINERS = 2  # the first two also host the LLM chute (SmolLM2 on CPU)
QUESTION = "In one sentence: what is Bittensor?"
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

    @property
    def validator_db(self) -> Path:
        return self.home / "validator.sqlite"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fresh_devnet(paths: DemoPaths, block_time: float, tempo: int) -> DevnetLedger:
    for suffix in ("", "-wal", "-shm"):  # a fresh chain and a fresh validator store
        Path(f"{paths.chain}{suffix}").unlink(missing_ok=True)
        Path(f"{paths.validator_db}{suffix}").unlink(missing_ok=True)
    ledger = DevnetLedger(paths.chain, block_time=block_time)
    ledger.create_subnet(NETUID, tempo=tempo, weights_rate_limit=2, stake_threshold=100.0)
    return ledger


def _chutes_config(paths: DemoPaths, name: str, llm: bool) -> Path:
    """The miner's hosting file: the echo chute everywhere, the LLM chute where ``llm``."""
    refs = ["examples.echo_chute:chute"] + (["examples.llm_chute:chute"] if llm else [])
    path = paths.home / f"{name}-chutes.toml"
    path.write_text("".join(f'[[chutes]]\nref = "{ref}"\ninstances = 1\n\n' for ref in refs))
    return path


def _start_miner(paths: DemoPaths, name: str, port: int, devices: int, llm: bool) -> subprocess.Popen:
    paths.logs.mkdir(parents=True, exist_ok=True)
    log = open(paths.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    command = [
        sys.executable, str(REPO / "neurons" / "miner.py"), "--network", "devnet", "--netuid", str(NETUID),
        "--wallet.name", name, "--wallet.hotkey", "default", "--wallet.path", str(paths.wallets),
        "--devnet.path", str(paths.chain), "--axon.ip", "127.0.0.1", "--axon.port", str(port),
        "--graval.cpu_devices", str(devices), "--graval.cpu_memory_mb", str(DEVICE_MEMORY_MB),
        "--chutes.config", str(_chutes_config(paths, name, llm)), "--chutes.log_dir", str(paths.logs),
    ]
    env = {**os.environ, "CANOPY_HOME": str(paths.home), "PYTHONUNBUFFERED": "1",
           "CANOPY_MODEL_CACHE": str(models_root())}  # one converted model for every run
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


LLM_CHUTE_ID = chute_id("canopy", _default_name(BUNDLED_MODEL))


async def _wait_for_llm(dendrite: Dendrite, miners, timeout: float):
    """The first miner hosting the LLM chute, once every LLM host has a ready instance (so the
    validator's synthetic round measures them all)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = [miner for miner, result in zip(miners, await dendrite.query(miners, Inventory(), timeout=5.0))
                 if result.ok and any(c.chute_id == LLM_CHUTE_ID and c.ready_instances for c in result.response.chutes)]
        if len(ready) >= LLM_MINERS:
            return ready[0]
        await asyncio.sleep(1.0)
    raise RuntimeError(f"the LLM chute was not ready on {LLM_MINERS} miners within {timeout:.0f}s (see the miner logs)")


async def _chat(validator, miner) -> str:
    """Ask the LLM chute a question through the miner's axon, printing tokens as they stream."""
    payload = {"model": BUNDLED_MODEL, "messages": [{"role": "user", "content": QUESTION}],
               "max_tokens": 60, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    decoder, pieces, usage = SSEDecoder(), [], {}
    console.print(f"[bold]Q[/] (validator → miner uid {miner.uid} → LLM chute): {QUESTION}")
    console.print("[bold]A[/] ", end="")
    started = time.perf_counter()
    async with Dendrite(validator) as dendrite:
        synapse = Invoke(chute_id=LLM_CHUTE_ID, path="/v1/chat/completions", payload=payload, stream=True)
        async for chunk in dendrite.stream(miner, synapse, timeout=120):
            if chunk.error is not None:
                raise RuntimeError(f"the LLM chute failed: {chunk.error.type}: {chunk.error.message}")
            for event in decoder.feed(chunk.data or ""):
                if isinstance(event, dict) and event.get("choices"):
                    piece = event["choices"][0]["delta"].get("content") or ""
                    pieces.append(piece)
                    console.print(piece, end="", markup=False, highlight=False)
                elif isinstance(event, dict) and event.get("usage"):
                    usage = event["usage"]
    elapsed = time.perf_counter() - started
    console.print()
    if not "".join(pieces).strip():
        raise RuntimeError("the LLM chute streamed an empty answer")
    tokens = usage.get("completion_tokens", len(pieces))
    return f"[dim]{tokens} tokens in {elapsed:.1f} s ({tokens / elapsed:.1f} tok/s), streamed over Invoke[/]"


async def _inventories(validator, graph):
    async with Dendrite(validator) as dendrite:
        return await dendrite.query(graph.serving_miners(), Inventory(), timeout=5.0)


def _chutes_table(graph, inventories) -> Table:
    table = Table(title="Chutes hosted (Inventory)", header_style="bold")
    for column in ("UID", "HOTKEY", "CHUTE", "CORDS", "READY"):
        table.add_column(column)
    for neuron, result in zip(graph.serving_miners(), inventories):
        for chute in (result.response.chutes if result.ok else []):
            table.add_row(str(neuron.uid), short(neuron.hotkey), chute.name, ", ".join(c.path for c in chute.cords),
                          f"{chute.ready_instances}/{chute.instances}")
    return table


def _validator_settings(paths: DemoPaths):
    return load_settings(["--network", "devnet", "--netuid", str(NETUID), "--devnet.path", str(paths.chain),
                          "--wallet.name", "owner", "--wallet.hotkey", "validator", "--wallet.path", str(paths.wallets),
                          "--graval.allow_cpu", "--wandb.mode", "disabled"])


async def _validate(paths: DemoPaths, wallet, chain: DevnetChain, store: ValidatorStore, dendrite: Dendrite,
                    progress: Progress, max_steps: int = 30):
    """Validator steps (GraVal rounds, a synthetic round, scoring) until the first weights are set."""
    task = progress.add_task("validator: GraVal, synthetic calls, scores, weights", total=None)
    validator = Validator(wallet=wallet, chain=chain, settings=_validator_settings(paths), store=store,
                          dendrite=dendrite, table=load_gpu_table())
    try:
        for _ in range(max_steps):
            report = await validator.step(wait=True)
            progress.advance(task)
            if report.weights is not None and report.weights.ok:
                progress.update(task, total=1, completed=1)
                return report
            await asyncio.sleep(1.0)
    finally:
        await validator.close()
    raise RuntimeError(f"the validator set no weights within {max_steps} steps")


async def _verifications(store: ValidatorStore, graph) -> list[list]:
    """Each serving miner's devices, newest verification first (as the store holds them)."""
    latest = await store.latest_verifications()
    return [sorted((row for row in latest.values() if row.miner_hotkey == neuron.hotkey), key=lambda row: row.uuid)
            for neuron in graph.serving_miners()]


def _scores_table(graph, rounds, activity, report) -> Table:
    table = Table(title="Validator scores (README: Scoring) and the weights set", header_style="bold")
    for column in ("UID", "HOTKEY", "GPUS OK", "SYNTH OK", "FLAGGED", "RAW", "SCORE", "WEIGHT"):
        table.add_column(column)
    weights = dict(zip(report.weights.uids, report.weights.weights)) if report.weights else {}
    for neuron, rows in zip(graph.serving_miners(), rounds):
        record = activity.get(neuron.hotkey)
        table.add_row(str(neuron.uid), short(neuron.hotkey), f"{sum(r.ok for r in rows)}/{len(rows)}",
                      f"{record.synthetic_ok}/{record.synthetic_total}" if record else "-",
                      str(record.flagged) if record else "-", f"{report.raw.get(neuron.hotkey, 0.0):.3f}",
                      f"{report.scores.get(neuron.hotkey, 0.0):.3f}", f"{weights.get(neuron.uid, 0.0):.3f}")
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

            processes = [_start_miner(paths, name, _free_port(), devices, llm=index < LLM_MINERS)
                         for index, (name, devices) in enumerate(zip(MINERS, MINER_DEVICES))]
            await _wait_for_axons(chain, processes, progress, timeout=90)

            graph = await chain.metagraph(NETUID)
            store = await ValidatorStore.open(f"sqlite+aiosqlite:///{paths.validator_db}")
            try:
                async with Dendrite(validator) as dendrite:
                    results = await dendrite.query(graph.serving_miners(), Ping(), timeout=5.0)
                    if not any(result.ok for result in results):
                        raise RuntimeError("no miner answered the signed Ping")
                    chat_task = progress.add_task("LLM chute ready on a miner (first run converts the model, ~40 s)", total=1)
                    host = await _wait_for_llm(dendrite, graph.serving_miners(), timeout=300)
                    progress.update(chat_task, completed=1)
                    report = await _validate(paths, validator, chain, store, dendrite, progress)
                rounds = await _verifications(store, graph)
                activity = await store.activity_since(0.0)
            finally:
                await store.close()
            submission = report.weights
            weights_task = progress.add_task("waiting for the epoch to pay out", total=1)
            while (await chain.metagraph(NETUID)).by_uid(submission.uids[0]).incentive == 0:
                await asyncio.sleep(block_time / 2)
            progress.update(weights_task, completed=1)

        console.print(_ping_table(graph, results))
        console.print(_devices_table(graph, rounds))
        console.print(_chutes_table(graph, await _inventories(validator, graph)))
        console.print(await _chat(validator, host))
        console.print(_scores_table(graph, rounds, activity, report))
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
