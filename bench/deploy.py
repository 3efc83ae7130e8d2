"""Deploy to first call, and public-chute throughput against a direct signed Invoke.

A devnet with a validator, its API and ``--miners`` miner processes started without a
hosting file (``tests.support.subnet.DeployNet``, the processes the devnet tests run). Then:

- ``deploy_to_first_call_s``: ``--deploys`` times, a chute written for the run (a new name
  each time, so nobody hosts it yet) is deployed with the real ``canopy deploy`` and called
  through ``POST /chutes/bench/NAME/echo`` at once; the figure is the median of the seconds
  from starting ``canopy deploy`` to the first successful answer (the call waits in the API's
  cold start meanwhile). Target <= 15 s (Chutes' build-and-deploy takes minutes).
- ``public_rps`` against ``direct_rps``: ``--concurrency`` callers for ``--seconds`` each, the
  public route through the API (key, credits, rate limits, request log, invocation record,
  then the signed Invoke) and a signed ``Invoke`` straight to a miner's axon with the
  validator's hotkey, in the same run. Target ``public_over_direct >= 0.5`` (as the LLM routes).

    .venv/bin/python bench/deploy.py [--deploys 5] [--seconds 8] [--concurrency 16]

Prints a rich table, then as its last line one JSON object with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from rich.console import Console  # noqa: E402

from bench.report import print_last_line, print_table, progress, verdict  # noqa: E402

TARGETS = {"deploy_to_first_call_s": 15.0, "public_over_direct": 0.5}
CHUTE = '''
from pydantic import BaseModel
from canopy import Chute, NodeSelector

chute = Chute(username="bench", name=NAME, node_selector=NodeSelector(gpu_count=1, min_vram_gb_per_gpu=0),
              concurrency=64)


class Text(BaseModel):
    text: str


@chute.cord(public_api_path="/echo")
async def echo(self, args: Text) -> dict:
    return {"text": args.text}
'''


async def first_call_after_deploy(net, http, key: str, folder: Path, name: str) -> float:
    (folder / name).mkdir(parents=True)
    source = folder / name / f"{name}.py"
    source.write_text(f"NAME = {name!r}\n" + CHUTE)
    started = time.perf_counter()
    deployed = await asyncio.to_thread(net.cli, "deploy", f"{source}:chute", key=key)
    if deployed.returncode != 0:
        raise RuntimeError(f"canopy deploy failed: {deployed.stdout}{deployed.stderr}")
    while True:
        status, body, _ = await net.call(http, f"/chutes/bench/{name}/echo", {"text": "hi"}, key=key)
        if status == 200:
            return time.perf_counter() - started
        if status not in (502, 503, 504) or time.perf_counter() - started > 120:
            raise RuntimeError(f"the first call of bench/{name} answered {status}: {body}")


async def rate(call, concurrency: int, seconds: float) -> tuple[float, int]:
    """(calls per second, errors) of ``concurrency`` workers running ``call`` for ``seconds``."""
    done, failed = 0, 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, failed
        while time.perf_counter() < deadline:
            try:
                await call()
                done += 1
            except Exception:  # noqa: BLE001 - counted and reported
                failed += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started), failed


async def run(args: argparse.Namespace, console: Console) -> dict:
    import aiohttp

    from node.wallets import create_devnet_wallet
    from protocol.chutes import Invoke
    from protocol.dendrite import Dendrite
    from protocol.graval.synapses import Inventory
    from tests.support.subnet import DeployNet

    results: dict = {"miners": args.miners, "deploys": args.deploys, "concurrency": args.concurrency}
    with tempfile.TemporaryDirectory(prefix="canopy-bench-deploy-") as tmp:
        home = Path(tmp)
        net = DeployNet(home, miners={f"m{i}": 1 for i in range(args.miners)}, api_flags=["--api.cold_start_wait_s", "60",
                                                                                         "--api.rate_limit", "1000000/60s"])
        try:
            with progress(console) as bar:
                task = bar.add_task("devnet, miners, validator, API", total=1)
                await net.start()
                bar.update(task, completed=1)
                key = await net.key("bench", owner="bench")
                seconds = []
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                    task = bar.add_task("deploy -> first public call", total=args.deploys)
                    for index in range(args.deploys):
                        seconds.append(await first_call_after_deploy(net, http, key, home / "chutes", f"echo{index}"))
                        bar.advance(task)
                    results["deploy_to_first_call_each_s"] = [round(s, 2) for s in seconds]
                    results["deploy_to_first_call_s"] = statistics.median(seconds)

                    wallet = create_devnet_wallet("owner", "validator", home / "wallets")
                    miner = net.ledger.metagraph(1).by_hotkey(net.hotkeys["m0"])
                    async with Dendrite(wallet) as dendrite:
                        hosted = (await dendrite.call(miner, Inventory(), timeout=10)).response.chutes
                        chute = next(c for c in hosted if c.chute_id == _id("echo0"))
                        invoke = Invoke(chute_id=chute.chute_id, path="/echo", payload={"text": "hi"}, stream=False,
                                        revision=chute.revision)

                        async def direct() -> None:
                            async for chunk in dendrite.stream(miner, invoke, timeout=30):
                                if chunk.done and (chunk.error is not None or (chunk.status or 200) >= 400):
                                    raise RuntimeError(f"direct Invoke failed: {chunk}")

                        async def public() -> None:
                            status, body, _ = await net.call(http, "/chutes/bench/echo0/echo", {"text": "hi"}, key=key)
                            if status != 200:
                                raise RuntimeError(f"public call answered {status}: {body}")

                        task = bar.add_task("throughput: direct Invoke, then the public route", total=2)
                        await rate(direct, 4, 1.0)  # warm both paths
                        await rate(public, 4, 1.0)
                        results["direct_rps"], results["direct_errors"] = await rate(direct, args.concurrency, args.seconds)
                        bar.advance(task)
                        results["public_rps"], results["public_errors"] = await rate(public, args.concurrency, args.seconds)
                        bar.advance(task)
        finally:
            outputs = net.stop()
            failed = {name: code for name, (code, _) in outputs.items() if code != 0}
            if failed:
                console.print(f"[red]processes exited with errors: {failed}")
    results["public_over_direct"] = results["public_rps"] / results["direct_rps"] if results["direct_rps"] else 0.0
    met = {"deploy_to_first_call_s": results["deploy_to_first_call_s"] <= TARGETS["deploy_to_first_call_s"],
           "public_over_direct": results["public_over_direct"] >= TARGETS["public_over_direct"]
           and results["public_errors"] == 0 and results["direct_errors"] == 0}
    verdict(results, TARGETS, met)
    return results


def _id(name: str) -> str:
    from canopy.chute import chute_id

    return chute_id("bench", name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deploys", type=int, default=5, help="deploys timed (median)")
    parser.add_argument("--miners", type=int, default=1, help="miner processes")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per throughput figure")
    parser.add_argument("--concurrency", type=int, default=16, help="callers at once in the throughput figures")
    args = parser.parse_args()
    console = Console(stderr=True)
    results = asyncio.run(run(args, console))
    checks = {"deploy_to_first_call_s": (f"<= {TARGETS['deploy_to_first_call_s']:g}", results["met"]["deploy_to_first_call_s"]),
              "public_over_direct": (f">= {TARGETS['public_over_direct']:g}", results["met"]["public_over_direct"])}
    print_table("Deploy: deploy -> first call, public route vs direct Invoke", results, checks)
    print_last_line(results)


if __name__ == "__main__":
    main()
