"""``./run.sh demo``: a whole local subnet on the embedded devnet, in one command.

Run as ``./run.sh demo`` or ``python -m neurons.demo``. It creates a fresh devnet under
``$CANOPY_HOME/demo``, makes the wallets (owner/validator and three miners), registers and
stakes them, starts the miners as real processes (two honest ``neurons.miner`` with one and
two CPU pseudo-devices, and ``neurons.demo_cheater``, which claims a device it cannot
prove), none with a hosting file, and the public API (``neurons.api``), waits for their
axons on chain, pings each over the signed protocol from the validator's hotkey, creates an
API key of the owner ``canopy`` and deploys the echo chute and the SmolLM2 chute through the
API with ``canopy deploy``. The validator's own steps then run in-process: it announces the
registry, the miners' autoscalers pick the chutes up (bundles delivered and checked), and
GraVal rounds, a synthetic round and scoring run until it sets weights. It then asks the API
a question with the official ``openai`` client (streamed; the answering miner comes from the
response headers), calls the echo chute at its public route, and prints the deployed
chutes, the devices, chutes hosted, the subnet table (devices claimed/verified, score, weight, incentive after
the epoch), the metagraph, and the curl line and URLs to try next. Then the validator goes
on as a process (weights every tempo): ``--once`` exits after printing (everything
stopped), ``--keep`` leaves it all running in the background (``./run.sh demo stop`` ends
it; ``neurons.demo_processes``), and by default it serves until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import typer
from loguru import logger
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from neurons.cli.tables import metagraph_table, short
from canopy.paths import canopy_home
from node.config import load_settings
from neurons.demo_processes import (
    NETUID, VALIDATOR_FLAGS, DemoPaths, devnet_flags, free_port, keep, spawn, start_api, start_validator, stop, stop_kept,
)
from node.wallets import coldkey_ss58, create_devnet_wallet
from chain.base import Neuron
from chain.devnet import DevnetChain, DevnetLedger
from canopy.chute import chute_id
from canopy.templates.llm import BUNDLED_MODEL, default_chute_name
from protocol.dendrite import Dendrite
from protocol.graval.synapses import Inventory, InventoryResponse
from protocol.graval.devices import load_gpu_table
from protocol.synapse import Ping
from api.keys import KeyStore
from validator.loop import Validator
from store.queries import ValidatorStore

MINERS = ("miner1", "miner2", "miner3")
MINER_DEVICES = (1, 2, 1)  # CPU pseudo-devices each miner offers (claims)
CHEATER = "miner3"  # commits to random GraVal roots: neurons/demo_cheater.py
LLM_MINERS = len(MINERS)  # every miner hosts the LLM chute (SmolLM2 on CPU) and the echo chute
QUESTION = "In one sentence: what is Bittensor?"
CHUTE_OWNER = "canopy"  # the demo key's owner: the example chutes are deployed as canopy/NAME
ECHO_REF, LLM_REF = "examples/echo_chute.py:chute", "examples/llm_chute.py:chute"
DEVICE_MEMORY_MB = 16  # per device: 9 matrices of 1024 x 1024 and 144 access steps
VALIDATOR_STAKE = 1000.0
API_PORT = 8000  # the README's address, when it is free

console = Console()


def _registered(neuron: Neuron | None) -> Neuron:
    """A neuron the demo registered (none deregisters while it runs)."""
    if neuron is None:
        raise RuntimeError("a demo neuron is no longer registered")
    return neuron


def _fresh_devnet(paths: DemoPaths, block_time: float, tempo: int) -> DevnetLedger:
    for suffix in ("", "-wal", "-shm"):  # a fresh chain and a fresh validator store
        Path(f"{paths.chain}{suffix}").unlink(missing_ok=True)
        Path(f"{paths.validator_db}{suffix}").unlink(missing_ok=True)
    ledger = DevnetLedger(paths.chain, block_time=block_time)
    ledger.create_subnet(NETUID, tempo=tempo, weights_rate_limit=2, stake_threshold=100.0)
    return ledger


def _start_miner(paths: DemoPaths, name: str, port: int, devices: int) -> subprocess.Popen:
    """A miner with no hosting file: it hosts what the validator announces and its autoscaler picks."""
    entry = ["-m", "neurons.demo_cheater"] if name == CHEATER else ["-m", "neurons.miner"]
    return spawn(paths, name, [
        *entry, *devnet_flags(paths, name, "default"), "--axon.ip", "127.0.0.1", "--axon.port", str(port),
        "--graval.cpu_devices", str(devices), "--graval.cpu_memory_mb", str(DEVICE_MEMORY_MB),
        "--chutes.autoscale_interval_s", "1", "--chutes.log_dir", str(paths.logs)])


def _deploy(url: str, key: str, ref: str, *flags: str) -> dict:
    """``canopy deploy REF`` as a chute author runs it; its JSON answer."""
    done = subprocess.run([sys.executable, "-m", "canopy.cli.main", "deploy", ref, "--api", url, "--key", key, "--json",
                           *flags], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"canopy deploy {ref} failed: {(done.stdout + done.stderr).strip()[-2000:]}")
    return json.loads(done.stdout)


async def _wait_for_axons(chain: DevnetChain, processes: list[subprocess.Popen], progress: Progress, timeout: float) -> None:
    task = progress.add_task("miners serving on chain", total=len(processes))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"a miner exited with code {process.returncode}; see its log")
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


LLM_CHUTE_ID = chute_id("canopy", default_chute_name(BUNDLED_MODEL))
ECHO_CHUTE_ID = chute_id("canopy", "echo")


async def _wait_for_chute(dendrite: Dendrite, miners, chute: str, timeout: float, *, hosts: int = 1) -> None:
    """Until ``hosts`` of ``miners`` have a ready instance of ``chute`` (the announcements go on meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = [result for result in await dendrite.query(miners, Inventory(), timeout=5.0)
                 if isinstance(result.response, InventoryResponse)
                 and any(c.chute_id == chute and c.ready_instances for c in result.response.chutes)]
        if len(ready) >= hosts:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"chute {chute} was not ready on {hosts} miner(s) within {timeout:.0f}s (see the miner logs)")


async def _api_key(paths: DemoPaths) -> str:
    """A fresh API key in the store the API reads (``canopy keys create`` does the same), of the
    owner ``canopy``: it deploys the example chutes (``canopy/echo``, ``canopy/<LLM>``) and calls them."""
    store = await ValidatorStore.open(paths.database_url)
    try:
        keys = KeyStore(store.engine)
        await keys.create_tables()
        _, key = await keys.create(f"demo-{int(time.time())}", credits=1000, rate_limits=["60/60s"], owner=CHUTE_OWNER,
                                   scopes=["invoke", "deploy"])
        return key
    finally:
        await store.close()


async def _call_echo(url: str, key: str) -> tuple[dict, str, float]:
    """The echo chute through the public API: (its answer, the miner uid, seconds)."""
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/chutes/{CHUTE_OWNER}/echo/echo", json={"text": "hello from the public API"},
                                headers={"Authorization": f"Bearer {key}"}, timeout=aiohttp.ClientTimeout(total=90)) as reply:
            if reply.status != 200:
                raise RuntimeError(f"the echo chute answered {reply.status}: {(await reply.text())[:300]}")
            return await reply.json(), reply.headers.get("x-canopy-miner-uid", "?"), time.perf_counter() - started


async def _wait_for_api(url: str, api: subprocess.Popen, timeout: float, key: str | None = None) -> None:
    """Until the API answers ``/health`` (no ``key``), or ``GET /v1/models`` lists the LLM chute
    (verified miners with a ready instance)."""
    deadline = time.monotonic() + timeout
    path, headers = ("/v1/models", {"authorization": f"Bearer {key}"}) if key else ("/health", {})
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if api.poll() is not None:
                raise RuntimeError(f"the API exited with code {api.returncode}; see logs/api.log")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url + path, headers=headers) as response:
                    if key is None and response.status < 500:
                        return
                    if response.status == 200 and key and any(m["id"] == BUNDLED_MODEL for m in (await response.json())["data"]):
                        return
            await asyncio.sleep(0.3)
    raise RuntimeError(f"the API did not {'list ' + BUNDLED_MODEL if key else 'answer /health'} within {timeout:.0f}s "
                       "(see logs/api.log)")


def _ask_api(url: str, key: str) -> tuple[str, str, str, float]:
    """Stream an answer with the official ``openai`` client: (text, miner uid, hotkey, seconds)."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key=key, timeout=120, max_retries=1)
    console.print(f"[bold]Q[/] (openai client → API → a verified miner → LLM chute): {QUESTION}")
    console.print("[bold]A[/] ", end="")
    pieces, started = [], time.perf_counter()
    with client.chat.completions.with_streaming_response.create(
            model=BUNDLED_MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=60, temperature=0,
            stream=True) as response:
        uid, hotkey = response.headers.get("x-canopy-miner-uid", "?"), response.headers.get("x-canopy-miner-hotkey", "")
        for chunk in response.parse():
            piece = (chunk.choices[0].delta.content or "") if chunk.choices else ""
            pieces.append(piece)
            console.print(piece, end="", markup=False, highlight=False)
    console.print()
    if not "".join(pieces).strip():
        raise RuntimeError("the API streamed an empty answer")
    return "".join(pieces), uid, hotkey, time.perf_counter() - started


def _try_next(url: str, key: str, mode: str) -> str:
    serving = {"once": "with ./run.sh demo or --keep: --once stops everything now",
               "keep": "the API keeps serving until ./run.sh demo stop",
               "serve": "the API serves until Ctrl-C"}[mode]
    return (f"[bold]Try next[/] ({serving}):\n"
            f"  curl -s {url}/v1/chat/completions -H 'Authorization: Bearer {key}' "
            f"-H 'Content-Type: application/json' \\\n"
            f"    -d '{{\"model\": \"{BUNDLED_MODEL}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hi\"}}], "
            f"\"max_tokens\": 32}}'\n"
            f"  curl -s {url}/chutes/{CHUTE_OWNER}/echo/echo -H 'Authorization: Bearer {key}' "
            f"-H 'Content-Type: application/json' -d '{{\"text\": \"hi\"}}'\n"
            f"  CANOPY_API_URL={url} CANOPY_API_KEY={key} ./run.sh canopy chutes list   # and canopy deploy FILE.py:chute\n"
            f"  API docs: {url}/docs  ·  web UI: {url}/ui/  ·  metrics: {url}/metrics")


async def _inventories(validator, graph):
    async with Dendrite(validator) as dendrite:
        return await dendrite.query(graph.serving_miners(), Inventory(), timeout=5.0)


def _chutes_table(graph, inventories) -> Table:
    table = Table(title="Chutes hosted (Inventory): picked up from the registry by the miners' autoscalers",
                  header_style="bold")
    for column in ("UID", "HOTKEY", "CHUTE", "REVISION", "CORDS", "READY"):
        table.add_column(column)
    for neuron, result in zip(graph.serving_miners(), inventories):
        for chute in (result.response.chutes if result.ok else []):
            table.add_row(str(neuron.uid), short(neuron.hotkey), chute.name, chute.revision[:12],
                          ", ".join(c.path for c in chute.cords), f"{chute.ready_instances}/{chute.instances}")
    return table


def _deployed_table(deployed: list[dict]) -> Table:
    table = Table(title="Deployed with canopy deploy (the registry)", header_style="bold")
    for column in ("CHUTE", "REVISION", "MAX INSTANCES", "PUBLIC URLS"):
        table.add_column(column)
    for chute in deployed:
        table.add_row(f"{chute['owner']}/{chute['name']}", chute["revision"][:12], str(chute["max_instances"]),
                      "\n".join(chute.get("urls") or []) or "(LLM: /v1/chat/completions)")
    return table


def _validator_settings(paths: DemoPaths):
    """The in-process validator's settings: those ``start_validator`` gives the process after it."""
    return load_settings([*devnet_flags(paths, "owner", "validator"), *VALIDATOR_FLAGS])


async def _validate(validator: Validator, progress: Progress, max_steps: int = 30):
    """Validator steps (GraVal rounds, a synthetic round, scoring) until the first weights are set."""
    task = progress.add_task("validator: GraVal, synthetic calls, scores, weights", total=None)
    for _ in range(max_steps):
        report = await validator.step(wait=True)
        progress.advance(task)
        if report.weights is not None and report.weights.ok:
            progress.update(task, total=1, completed=1)
            return report
        await asyncio.sleep(1.0)
    raise RuntimeError(f"the validator set no weights within {max_steps} steps")


async def _verifications(store: ValidatorStore, graph) -> list[list]:
    """Each serving miner's devices, newest verification first (as the store holds them)."""
    latest = await store.latest_verifications()
    return [sorted((row for row in latest.values() if row.miner_hotkey == neuron.hotkey), key=lambda row: row.uuid)
            for neuron in graph.serving_miners()]


def _subnet_table(graph, rounds, activity, report, weights: dict[int, float]) -> Table:
    """Per miner: devices claimed and verified, synthetic calls, the validator's score, the
    weight the devnet holds from it (``weights``) and the incentive its epoch paid (``graph``
    read after it)."""
    table = Table(title="The subnet: devices, scores (validator), weights and incentive (devnet)",
                  header_style="bold")
    for column in ("UID", "HOTKEY", "DEVICES CLAIMED", "VERIFIED", "SYNTH OK", "SCORE", "WEIGHT", "INCENTIVE"):
        table.add_column(column)
    for neuron, rows in zip(graph.serving_miners(), rounds):
        record = activity.get(neuron.hotkey)
        table.add_row(str(neuron.uid), short(neuron.hotkey), str(len(rows)), str(sum(r.ok for r in rows)),
                      f"{record.synthetic_ok}/{record.synthetic_total}" if record else "-",
                      f"{report.scores.get(neuron.hotkey, 0.0):.3f}", f"{weights.get(neuron.uid, 0.0):.3f}",
                      f"{neuron.incentive:.3f}")
    return table


def _ping_table(graph, results) -> Table:
    table = Table(title="Signed Ping from the validator (btauth/1)", header_style="bold")
    for column in ("UID", "HOTKEY", "STATUS", "LATENCY"):
        table.add_column(column)
    for neuron, result in zip(graph.serving_miners(), results):
        status = "[green]ok[/]" if result.ok else f"[red]{result.status}[/]"
        table.add_row(str(neuron.uid), short(neuron.hotkey), status, f"{result.latency_s * 1000:.1f} ms")
    return table


async def _run(paths: DemoPaths, mode: str, block_time: float, tempo: int) -> int:
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

            processes = [_start_miner(paths, name, free_port(), devices) for name, devices in zip(MINERS, MINER_DEVICES)]
            await _wait_for_axons(chain, processes, progress, timeout=90)
            api_url = f"http://127.0.0.1:{free_port(preferred=API_PORT)}"
            api = start_api(paths, int(api_url.rsplit(":", 1)[1]))
            processes.append(api)

            graph = await chain.metagraph(NETUID)
            store = await ValidatorStore.open(f"sqlite+aiosqlite:///{paths.validator_db}")
            try:
                async with Dendrite(validator) as dendrite:
                    results = await dendrite.query(graph.serving_miners(), Ping(), timeout=5.0)
                    if not any(result.ok for result in results):
                        raise RuntimeError("no miner answered the signed Ping")
                    deploy_task = progress.add_task("canopy deploy: the echo and LLM chutes, through the API", total=2)
                    key = await _api_key(paths)
                    await _wait_for_api(api_url, api, timeout=60)
                    deployed = [await asyncio.to_thread(_deploy, api_url, key, ECHO_REF)]
                    progress.advance(deploy_task)
                    deployed.append(await asyncio.to_thread(_deploy, api_url, key, LLM_REF, "--max-instances", str(LLM_MINERS)))
                    progress.advance(deploy_task)
                    steps = Validator(wallet=validator, chain=chain, settings=_validator_settings(paths), store=store,
                                      dendrite=dendrite, table=load_gpu_table())
                    announcing_stop = asyncio.Event()
                    announcing = asyncio.create_task(steps.announce_forever(announcing_stop))
                    try:
                        chat_task = progress.add_task("miners pick the LLM chute up (first run converts the model, ~40 s)",
                                                      total=1)
                        await _wait_for_chute(dendrite, graph.serving_miners(), LLM_CHUTE_ID, timeout=300, hosts=LLM_MINERS)
                        progress.update(chat_task, completed=1)
                        report = await _validate(steps, progress)
                        echo_task = progress.add_task("a verified miner picks the echo chute up", total=1)
                        await _wait_for_chute(dendrite, [n for n in graph.serving_miners() if n.hotkey in steps.verified_miners],
                                              ECHO_CHUTE_ID, timeout=90)
                        progress.update(echo_task, completed=1)
                    finally:
                        announcing_stop.set()
                        await announcing
                        await steps.close()
                rounds = await _verifications(store, graph)
                activity = await store.activity_since(0.0)
            finally:
                await store.close()
            submission = report.weights
            weights_task = progress.add_task("waiting for the epoch to pay out", total=1)
            while _registered((await chain.metagraph(NETUID)).by_uid(submission.uids[0])).incentive == 0:
                await asyncio.sleep(block_time / 2)
            progress.update(weights_task, completed=1)
            api_task = progress.add_task("API: verified miners listed", total=1)
            await _wait_for_api(api_url, api, timeout=60, key=key)
            progress.update(api_task, completed=1)

        console.print(_ping_table(graph, results))
        console.print(_devices_table(graph, rounds))
        console.print(_chutes_table(graph, await _inventories(validator, graph)))
        console.print(_deployed_table(deployed))
        _, uid, hotkey, elapsed = await asyncio.to_thread(_ask_api, api_url, key)
        console.print(f"[dim]served by miner uid {uid} ({short(hotkey)}) in {elapsed:.1f} s, "
                      "through the API with the openai client[/]")
        echoed, echo_uid, echo_s = await _call_echo(api_url, key)
        console.print(f"[bold]echo[/] (POST {api_url}/chutes/{CHUTE_OWNER}/echo/echo → a miner that picked it up): "
                      f"{json.dumps(echoed)}  [dim]miner uid {echo_uid}, {echo_s:.2f} s[/]")
        paid = await chain.metagraph(NETUID)
        on_chain = ledger.weights(NETUID).get(_registered(paid.by_hotkey(validator.hotkey.ss58_address)).uid, {})
        console.print(_subnet_table(paid, rounds, activity, report, on_chain))
        weights = dict(zip(submission.uids, submission.weights))
        console.print(f"Weights set at block {submission.block}: " + ", ".join(
            f"uid {neuron.uid} = {weights.get(neuron.uid, 0.0):.3f}" for neuron in paid.serving_miners()))
        console.print(metagraph_table(paid, width=console.width))
        console.print(f"Devnet: {paths.chain}  ·  logs: {paths.logs}  ·  inspect with "
                      f"[bold]CANOPY_HOME={paths.home} ./run.sh canopy devnet metagraph[/]")
        console.print(_try_next(api_url, key, mode), soft_wrap=True)
        if mode == "once":
            return 0
        processes.append(start_validator(paths))  # weights go on being set every tempo
        if mode == "keep":
            keep(paths, dict(zip([*MINERS, "api", "validator"], processes)), api_url)
            processes = []  # left running
            console.print(f"Left running in the background (logs in {paths.logs}); stop it with "
                          "[bold]./run.sh demo stop[/]")
            return 0
        console.print("Serving until Ctrl-C …")
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopped.set)
        await stopped.wait()
        return 0
    finally:
        stop(processes)


def main(
    action: str = typer.Argument("run", help="run (the default), or stop: end a demo left running by --keep."),
    once: bool = typer.Option(False, "--once", help="Exit (code 0) right after printing, for scripts and CI."),
    keep_running: bool = typer.Option(False, "--keep", help="Leave the subnet running in the background "
                                      "(./run.sh demo stop ends it)."),
    block_time: float = typer.Option(1.0, "--block-time", min=0.1, max=12, help="Seconds per devnet block."),
    tempo: int = typer.Option(5, "--tempo", min=1, help="Blocks between epochs."),
) -> None:
    """Run a local Canopy subnet on the devnet and show it working (./run.sh demo [--once|--keep|stop])."""
    paths = DemoPaths(canopy_home() / "demo")
    if action not in ("run", "stop"):
        raise typer.BadParameter(f"{action!r}: use run (the default) or stop", param_hint="ACTION")
    if once and keep_running:
        raise typer.BadParameter("--once exits and stops everything; --keep leaves it running: pick one")
    stopped = stop_kept(paths)  # one demo at a time: it owns the devnet files
    if action == "stop":
        console.print(f"stopped: {', '.join(stopped)}" if stopped else "no demo was left running")
        raise typer.Exit(0)
    if stopped:
        console.print(f"[dim]stopped the demo left running before: {', '.join(stopped)}[/]")
    logger.remove()  # the tables tell the story; neuron logs are in the logs folder
    logger.add(sys.stderr, level="WARNING")
    mode = "once" if once else "keep" if keep_running else "serve"
    try:
        code = asyncio.run(_run(paths, mode, block_time, tempo))
    except RuntimeError as error:
        console.print(f"[red]demo failed:[/] {error} (logs in {paths.logs})")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


if __name__ == "__main__":
    typer.run(main)
