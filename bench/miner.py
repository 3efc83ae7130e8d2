"""Benchmark of the miner's chute path: an instance called directly vs through dendrite -> axon.

Run from the repo root: ``.venv/bin/python bench/miner.py [--echo-n 500] [--llm-requests 4]``.
The miner (axon + ``InstanceManager`` + ``ChutesService``, as
``neurons/miner.py`` wires them, on one CPU pseudo-device) runs in a child process (this
script re-invoked with ``--role miner``); its instances are its own children; the client
runs here. Every figure compares the same requests sent straight to the instance
(plain aiohttp, keep-alive) and as signed ``Invoke`` synapses to the miner's axon:

- ``echo_direct_rps`` / ``echo_via_miner_rps``: sequential calls of the echo chute's
  ``/echo`` cord (``examples/echo_chute.py``), medians of ``--repeats`` alternating runs;
- ``direct_tok_s`` / ``via_miner_tok_s`` / ``ratio`` (target >= 0.9): completion tokens per
  second of streamed chat completions (``stream_options.include_usage``), requests
  alternating between the two paths in the same run. The LLM chute is
  ``canopy.templates.llm.build_llm_chute`` on CPU when that module imports; otherwise a
  stand-in chute here that streams OpenAI chunks at a fixed ``--token-rate``, so the
  plumbing's cost is still measured (``llm`` in the output says which ran);
- ``cold_start_s``: the echo instance's spawn-to-ready time (``llm_cold_start_s`` the LLM's).

Prints a rich table, then as its last line one JSON object with every number.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

# This file is named like the package it measures: drop bench/ from the import path and put
# the repo root first, so `miner` is the package (the instances import this file too).
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT)] + [entry for entry in sys.path if Path(entry or ".").resolve() not in (HERE, ROOT)]

from pydantic import BaseModel, Field  # noqa: E402

from canopy.chute import Chute  # noqa: E402

TARGETS = {"ratio": 0.9}
CHAT_PATH = "/v1/chat/completions"
ECHO_REF = "examples.echo_chute:chute"
_BUILT: dict[str, Chute] = {}

# --- the stand-in LLM chute (used when canopy.templates.llm is not available) ---------------------

token_chute = Chute(username="bench", name="fixed-rate-tokens", node_selector={"gpu_count": 1, "min_vram_gb_per_gpu": 0},
                    concurrency=8, tagline="OpenAI-style token stream at a fixed rate (benchmark stand-in)")


class _ChatRequest(BaseModel):
    model: str = "fixed-rate"
    messages: list[dict] = Field(default_factory=list)
    max_tokens: int = Field(64, ge=1, le=100_000)
    stream: bool = True
    stream_options: dict | None = None


@token_chute.cord(path=CHAT_PATH, stream=True)
async def chat(self, request: _ChatRequest):
    rate = float(os.environ.get("BENCH_TOKEN_RATE", "200"))
    started = time.perf_counter()
    for index in range(request.max_tokens):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = {"id": "bench", "object": "chat.completion.chunk", "model": request.model,
                 "choices": [{"index": 0, "delta": {"content": f" tok{index}"}, "finish_reason": None}]}
        yield "data: " + json.dumps(chunk) + "\n\n"
    usage = {"prompt_tokens": 8, "completion_tokens": request.max_tokens, "total_tokens": 8 + request.max_tokens}
    yield "data: " + json.dumps({"id": "bench", "choices": [], "usage": usage}) + "\n\n"
    yield "data: [DONE]\n\n"


def __getattr__(name: str):  # "bench.miner:llm_chute", built only where it is described or served
    if name != "llm_chute":
        raise AttributeError(name)
    if name not in _BUILT:
        from canopy.node_selector import NodeSelector
        from canopy.templates.llm import build_llm_chute

        _BUILT[name] = build_llm_chute(model=os.environ.get("BENCH_LLM_MODEL", "HuggingFaceTB/SmolLM2-135M-Instruct"),
                                       concurrency=1, node_selector=NodeSelector(gpu_count=1, min_vram_gb_per_gpu=0))
    return _BUILT[name]


def llm_available() -> str:
    """'' when the real LLM template imports and builds a chute here, else why not."""
    try:
        from canopy.templates.llm import build_llm_chute  # noqa: F401
    except Exception as error:  # noqa: BLE001 - reported, then the stand-in runs
        return f"{type(error).__name__}: {error}"
    import subprocess

    described = subprocess.run([sys.executable, "-m", "canopy.instance", "describe", "bench.miner:llm_chute"],
                               cwd=ROOT, capture_output=True, text=True)
    if described.returncode != 0:
        return f"bench.miner:llm_chute does not build: {described.stderr.strip().splitlines()[-1:]}"
    return ""


# --- the miner (child process) ---------------------------------------------------------------------


async def serve_miner(wallet_path: str, refs: list[str]) -> None:
    import gc

    from loguru import logger

    from bench.protocol import BenchChain, free_ports, wallets
    from protocol.options import AxonSettings
    from miner.chutes_service import ChutesService
    from miner.hosting import ChuteEntry, HostingConfig, describe_chute, plan_hosting
    from miner.instances import InstanceManager
    from miner.inventory import cpu_device
    from protocol.axon import Axon

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    validator, miner = wallets(wallet_path)
    devices = [cpu_device(salt="bench-miner")]
    config = HostingConfig(chutes=[ChuteEntry(ref=ref) for ref in refs])
    plan = await plan_hosting(config, devices, describe=lambda ref: describe_chute(ref, cwd=ROOT))
    low = free_ports(1)[0]
    manager = InstanceManager(plan.instance_specs(), port_range=(low, min(65535, low + 50)), cwd=ROOT,
                              log_dir=Path(wallet_path) / "logs", start_timeout_s=600)
    axon = Axon(miner, BenchChain(validator, miner), 1, AxonSettings(ip="127.0.0.1", port=free_ports(1)[0]),
                metagraph_refresh_s=3600)
    ChutesService(manager, plan.hosted_chutes(), refused=plan.refused, devices=devices).attach(axon)
    await manager.start()
    await axon.start(publish=False)
    gc.collect()
    gc.freeze()
    chutes = {}
    for hosted in plan.hosted:
        [instance] = manager.by_chute[hosted.info.chute_id]
        chutes[hosted.entry.ref] = {"chute_id": hosted.info.chute_id, "url": instance.url, "ready": instance.state.value,
                                    "cold_start_s": instance.cold_start_s, "error": instance.last_error,
                                    "cords": {c.public_api_path or c.path: c.path for c in hosted.info.cords}}
    print(json.dumps({"axon": axon.url, "hotkey": axon.hotkey, "chutes": chutes,
                      "refused": {r.ref: r.reason for r in plan.refused}}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await axon.stop()
    await manager.stop()


# --- the client (this process) -----------------------------------------------------------------------


async def echo_rates(session, dendrite, target, chute: dict, n: int, repeats: int) -> tuple[float, float]:
    from protocol.chutes import Invoke

    url = chute["url"] + chute["cords"].get("/echo", "/echo")
    payload = {"text": "hello canopy"}
    synapse = Invoke(chute_id=chute["chute_id"], path="/echo", payload=payload)

    async def direct() -> None:
        async with session.post(url, json=payload) as response:
            assert response.status == 200, await response.text()
            await response.read()

    async def via() -> None:
        chunks = [chunk async for chunk in dendrite.stream(target, synapse, timeout=30)]
        assert chunks[-1].done and chunks[-1].status == 200, chunks

    async def rate(call) -> float:
        started = time.perf_counter()
        for _ in range(n):
            await call()
        return n / (time.perf_counter() - started)

    for _ in range(max(20, n // 10)):  # warm both paths
        await direct()
        await via()
    runs = [(await rate(direct), await rate(via)) for _ in range(repeats)]
    import statistics

    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def _sse_tokens(text: str) -> tuple[int, int]:
    """(completion tokens from usage, content chunks) in an SSE body."""
    usage, pieces = 0, 0
    for line in text.split("\n"):
        if not line.startswith("data: {"):
            continue
        event = json.loads(line[6:])
        if event.get("usage"):
            usage = event["usage"].get("completion_tokens", 0)
        if any((choice.get("delta") or {}).get("content") for choice in event.get("choices", [])):
            pieces += 1
    return usage, pieces


async def llm_rates(session, dendrite, target, chute: dict, max_tokens: int, requests: int) -> dict:
    from protocol.chutes import Invoke

    path = chute["cords"].get(CHAT_PATH, CHAT_PATH)
    payload = {"messages": [{"role": "user", "content": "Write a long story about a robot who learns to paint."}],
               "max_tokens": max_tokens, "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    totals = {"direct": [0, 0.0, []], "via": [0, 0.0, []]}  # tokens, seconds, time to first token

    async def direct() -> None:
        started = time.perf_counter()
        first, parts = None, []
        async with session.post(chute["url"] + path, json=payload) as response:
            assert response.status == 200, await response.text()
            async for part in response.content.iter_any():
                first = first or time.perf_counter()
                parts.append(part)
        usage, pieces = _sse_tokens(b"".join(parts).decode())
        record("direct", usage or pieces, started, first)

    async def via() -> None:
        started = time.perf_counter()
        first, parts, final = None, [], None
        synapse = Invoke(chute_id=chute["chute_id"], path=path, payload=payload)
        async for chunk in dendrite.stream(target, synapse, timeout=600):
            first = first or time.perf_counter()
            parts.append(chunk.data or "")
            final = chunk
        assert final is not None and final.done and final.error is None, final
        usage, pieces = _sse_tokens("".join(parts))
        record("via", (final.usage.completion_tokens if final.usage else 0) or usage or pieces, started, first)

    def record(side: str, tokens: int, started: float, first: float | None) -> None:
        ended = time.perf_counter()
        totals[side][0] += tokens
        totals[side][1] += ended - started
        totals[side][2].append((first or ended) - started)

    await direct()  # warm-up, not counted: first generations are slow
    await via()
    for side in totals.values():
        side[:] = [0, 0.0, []]
    for index in range(requests):  # alternating order, so neither path always goes first
        for call in ((direct, via) if index % 2 == 0 else (via, direct)):
            await call()
    import statistics

    result = {side: values[0] / values[1] for side, values in totals.items()}
    return {"direct_tok_s": result["direct"], "via_miner_tok_s": result["via"],
            "ratio": result["via"] / result["direct"], "llm_tokens_per_side": totals["direct"][0],
            "ttft_direct_s": statistics.median(totals["direct"][2]), "ttft_via_miner_s": statistics.median(totals["via"][2])}


async def measure(args, wallet_path: str, llm_ref: str, llm_note: str) -> dict:
    import subprocess

    import aiohttp

    from bench.protocol import wallets
    from protocol.dendrite import Dendrite, Target

    validator, _ = wallets(wallet_path)
    command = [sys.executable, __file__, "--role", "miner", "--wallets", wallet_path, "--refs", args.echo_ref, llm_ref]
    env = dict(os.environ, BENCH_TOKEN_RATE=str(args.token_rate))
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env)
    try:
        line = child.stdout.readline()
        if not line:
            raise RuntimeError(f"the miner process failed to start (exit {child.wait()})")
        miner = json.loads(line)
        if miner["refused"]:
            raise RuntimeError(f"the miner refused chutes: {miner['refused']}")
        echo, llm = miner["chutes"][args.echo_ref], miner["chutes"][llm_ref]
        for chute in (echo, llm):
            if chute["ready"] != "ready":
                raise RuntimeError(f"an instance did not start: {chute['error']}")
        target = Target(miner["hotkey"], miner["axon"])
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session, Dendrite(validator) as dendrite:
            results: dict = {"llm": llm_note, "echo_ref": args.echo_ref, "llm_ref": llm_ref}
            results["echo_direct_rps"], results["echo_via_miner_rps"] = await echo_rates(
                session, dendrite, target, echo, args.echo_n, args.repeats)
            results["echo_ratio"] = results["echo_via_miner_rps"] / results["echo_direct_rps"]
            results.update(await llm_rates(session, dendrite, target, llm, args.max_tokens, args.llm_requests))
            results["cold_start_s"] = echo["cold_start_s"]
            results["llm_cold_start_s"] = llm["cold_start_s"]
        return results
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()


def main() -> None:
    import argparse
    import gc
    import tempfile

    import uvloop

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--echo-n", type=int, default=500, help="sequential echo calls per run and path")
    parser.add_argument("--repeats", type=int, default=3, help="alternating echo runs (the median is reported)")
    parser.add_argument("--llm-requests", type=int, default=4, help="streamed chat completions per path (after one warm-up each)")
    parser.add_argument("--max-tokens", type=int, default=0, help="tokens per completion (default 48 LLM, 400 stand-in)")
    parser.add_argument("--token-rate", type=float, default=200.0, help="tokens/s of the stand-in LLM chute")
    parser.add_argument("--stand-in", action="store_true", help="use the fixed-rate stand-in even if the LLM template imports")
    parser.add_argument("--echo-ref", default=ECHO_REF, help="the echo chute")
    parser.add_argument("--llm-ref", help="an OpenAI-compatible chute to measure instead (e.g. a vLLM one on a GPU box)")
    parser.add_argument("--role", choices=("miner",), help=argparse.SUPPRESS)
    parser.add_argument("--wallets", help=argparse.SUPPRESS)
    parser.add_argument("--refs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        uvloop.run(serve_miner(args.wallets, args.refs))
        return
    missing = "--stand-in given" if args.stand_in else llm_available()
    if args.llm_ref:
        llm_ref, note = args.llm_ref, f"{args.llm_ref} (given)"
        args.max_tokens = args.max_tokens or 48
    elif missing:
        llm_ref, note = "bench.miner:token_chute", f"stand-in at {args.token_rate:g} tok/s ({missing})"
        args.max_tokens = args.max_tokens or 400
    else:
        llm_ref, note = "bench.miner:llm_chute", "canopy.templates.llm on CPU"
        args.max_tokens = args.max_tokens or 48
    print(f"LLM chute: {note}", file=sys.stderr)
    from bench.protocol import wallets
    from bench.report import print_last_line, print_table, verdict

    with tempfile.TemporaryDirectory(prefix="canopy-bench-miner-") as wallet_path:
        wallets(wallet_path)
        gc.freeze()
        results = uvloop.run(measure(args, wallet_path, llm_ref, note))
    verdict(results, TARGETS, {"ratio": results["ratio"] >= TARGETS["ratio"]})
    print_table(f"canopy miner benchmark (LLM: {note})", results,
                {"ratio": (f">= {TARGETS['ratio']:g}", results["met"]["ratio"])})
    print_last_line(results, digits=4)


if __name__ == "__main__":
    main()
