"""Benchmark of the miner's chute path: an instance called directly vs through dendrite -> axon,
and the same with the instances sandboxed vs run as plain processes, side by side.

Run from the repo root: ``.venv/bin/python bench/miner.py [--stand-in] [--echo-n 500]
[--llm-requests 4] [--no-runtime-compare]``. The miner (axon + ``InstanceManager`` +
``ChutesService``, as ``neurons/miner.py`` wires them, on one CPU pseudo-device) runs in a
child process (this script re-invoked with ``--role miner``); its instances are its own
children; the client runs here. A second miner child serves the same chutes with
``sandbox=True`` (``--chutes.runtime sandbox``: bubblewrap, a Unix socket; see
``bench/miner_runtimes.py``) unless ``--no-runtime-compare``. Each figure comes from rounds
in which every path takes its turn (the first one rotating), so the machine's noise hits
them alike: the same requests sent straight to an instance (plain aiohttp, keep-alive) and
as signed ``Invoke`` synapses to a miner's axon.

- ``echo_direct_rps`` / ``echo_via_miner_rps`` / ``echo_ratio``: sequential calls of the
  echo chute's ``/echo`` cord (``examples/echo_chute.py``), medians of ``--repeats`` rounds;
- ``direct_tok_s`` / ``via_miner_tok_s`` / ``ratio`` (target >= 0.9): completion tokens per
  second of streamed chat completions (``stream_options.include_usage``), ``--llm-requests``
  per path after one warm-up each. The LLM chute is ``canopy.templates.llm.build_llm_chute``
  on CPU when that module imports; otherwise a stand-in chute here that streams OpenAI
  chunks at a fixed ``--token-rate``, so the plumbing's cost is still measured (``llm`` in
  the output says which ran);
- ``cold_start_s``: the echo instance's spawn-to-ready time (``llm_cold_start_s`` the LLM's);
- the runtime comparison, through each miner's axon (the invoke path), in the same rounds:
  ``echo_sandboxed_rps`` / ``echo_process_rps`` / ``echo_sandbox_ratio`` (target >= 0.8),
  ``llm_sandboxed_tok_s`` / ``llm_process_tok_s`` / ``llm_sandbox_ratio`` (target >= 0.95;
  ``llm_ttft_*_s`` the median times to first token); the instance alone, over its Unix
  socket vs TCP: ``echo_sandboxed_direct_rps`` / ``echo_process_direct_rps`` /
  ``echo_sandbox_direct_ratio`` (the ``process`` figures are the same measurements as
  ``echo_via_miner_rps``, ``via_miner_tok_s`` and ``echo_direct_rps``); cold starts, the
  median over ``--cold-starts`` fresh echo instances per miner, taking turns, of the seconds
  from ``InstanceManager.add`` to the instance's first healthy answer (polled every 5 ms;
  the manager's own ``cold_start_s`` only sees it at its polling backoff's ticks):
  ``cold_start_sandboxed_s`` / ``cold_start_process_s`` / ``cold_start_ratio`` (no target),
  the same from a cached pip environment (an image that pip-installs ``cowsay``, built by a
  first unmeasured start): ``cold_start_env_sandboxed_s`` / ``cold_start_env_process_s`` /
  ``cold_start_env_ratio`` (``cold_start_env_unavailable`` when no package index answers),
  and ``llm_cold_start_sandboxed_s`` (the manager's, like ``llm_cold_start_s``); ``sandbox_caps``: whether the sandboxed
  instances got their cgroup (memory and process caps). Where the sandbox cannot run
  (bubblewrap missing, no user namespaces, an instance that does not start),
  ``sandbox_unavailable`` says why and the two sandbox targets count as missed.

Prints a rich table, then as its last line one JSON object with every number, the
targets, ``met`` per target and ``meets_targets`` (``bench.report.verdict``).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Awaitable, Callable

# This file is named like the package it measures: drop bench/ from the import path and put
# the repo root first, so `miner` is the package (the instances import this file too).
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT)] + [entry for entry in sys.path if Path(entry or ".").resolve() not in (HERE, ROOT)]

# Inside the sandbox the environment is cleared: the runtime comparison's bundle holds the
# bench's settings beside this file's copy (bench.miner_runtimes.make_bundle).
if (HERE / "miner_env.json").is_file():
    for _name, _value in json.loads((HERE / "miner_env.json").read_text()).items():
        os.environ.setdefault(_name, _value)

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


async def serve_miner(wallet_path: str, refs: list[str], bundle: str | None) -> None:
    """One miner; with ``bundle``, a sandboxed one whose instances run in that folder. Prints
    what it serves as one JSON line, then answers ``cold REF`` lines until stdin closes."""
    import dataclasses
    import gc

    from loguru import logger

    from bench.miner_runtimes import answer_commands, sandbox_facts
    from bench.protocol import BenchChain, free_ports, wallets
    from protocol.options import AxonSettings
    from miner.chutes_service import ChutesService
    from miner.hosting import ChuteEntry, HostingConfig, describe_chute, plan_hosting
    from miner.instances import InstanceManager
    from miner.inventory import cpu_device
    from protocol.axon import Axon

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    try:
        validator, miner = wallets(wallet_path)
        cwd = Path(bundle) if bundle else ROOT
        devices = [cpu_device(salt="bench-miner")]
        config = HostingConfig(chutes=[ChuteEntry(ref=ref) for ref in refs])
        plan = await plan_hosting(config, devices, describe=lambda ref: describe_chute(ref, cwd=cwd))
        specs = plan.instance_specs()
        if bundle:  # the bundle is each instance's working directory, as a registry chute's is
            specs = [dataclasses.replace(spec, cwd=bundle) for spec in specs]
        low = free_ports(1)[0]
        manager = InstanceManager(specs, port_range=(low, min(65535, low + 50)), cwd=cwd, log_dir=Path(wallet_path) / "logs",
                                  start_timeout_s=600, sandbox=bundle is not None)
        axon = Axon(miner, BenchChain(validator, miner), 1, AxonSettings(ip="127.0.0.1", port=free_ports(1)[0]),
                    metagraph_refresh_s=3600)
        ChutesService(manager, plan.hosted_chutes(), refused=plan.refused, devices=devices).attach(axon)
        await manager.start()
        await axon.start(publish=False)
    except Exception as error:  # the parent reports it (the sandboxed side: why it did not run)
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}), flush=True)
        raise
    gc.collect()
    gc.freeze()
    chutes = {}
    for hosted in plan.hosted:
        [instance] = manager.by_chute[hosted.info.chute_id]
        chutes[hosted.entry.ref] = {"chute_id": hosted.info.chute_id, "url": instance.url, "ready": instance.state.value,
                                    "cold_start_s": instance.cold_start_s, "error": instance.last_error,
                                    "cords": {c.public_api_path or c.path: c.path for c in hosted.info.cords},
                                    **sandbox_facts(instance)}
    print(json.dumps({"axon": axon.url, "hotkey": axon.hotkey, "chutes": chutes,
                      "refused": {r.ref: r.reason for r in plan.refused}}), flush=True)
    await answer_commands(manager, specs)  # until the parent closes stdin
    await axon.stop()
    await manager.stop()


# --- the client (this process) -----------------------------------------------------------------------

Call = Callable[[], Awaitable[None]]
#: one streamed chat completion: (completion tokens, seconds, seconds to the first chunk)
Stream = Callable[[], Awaitable[tuple[int, float, float]]]


def echo_direct(session, chute: dict) -> Call:
    """A call of the echo cord straight to the instance (over ``session``'s connection)."""
    url = chute["url"] + chute["cords"].get("/echo", "/echo")

    async def call() -> None:
        async with session.post(url, json={"text": "hello canopy"}) as response:
            assert response.status == 200, await response.text()
            await response.read()

    return call


def echo_via(dendrite, target, chute: dict) -> Call:
    """The same call as a signed ``Invoke`` to the miner's axon."""
    from protocol.chutes import Invoke

    synapse = Invoke(chute_id=chute["chute_id"], path="/echo", payload={"text": "hello canopy"})

    async def call() -> None:
        chunks = [chunk async for chunk in dendrite.stream(target, synapse, timeout=30)]
        assert chunks[-1].done and chunks[-1].status == 200, chunks

    return call


def _rotated(names: list[str], index: int) -> list[str]:
    """Round ``index``'s order: each path goes first in turn, so none always has the warm start."""
    return names[index % len(names):] + names[:index % len(names)]


async def echo_rates(calls: dict[str, Call], n: int, repeats: int, chunk: int = 50) -> dict[str, float]:
    """Requests/s of ``n`` sequential calls per path: the median of ``repeats`` rounds. Within a
    round the paths take turns every ``chunk`` calls, so a burst of load elsewhere on the
    machine slows them alike."""
    for _ in range(max(20, n // 10)):  # warm every path
        for call in calls.values():
            await call()
    runs: dict[str, list[float]] = {name: [] for name in calls}
    for index in range(repeats):
        seconds = dict.fromkeys(calls, 0.0)
        for turn, start in enumerate(range(0, n, chunk)):
            for name in _rotated(list(calls), index + turn):
                started = time.perf_counter()
                for _ in range(min(chunk, n - start)):
                    await calls[name]()
                seconds[name] += time.perf_counter() - started
        for name, spent in seconds.items():
            runs[name].append(n / spent)
    return {name: statistics.median(values) for name, values in runs.items()}


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


def chat_payload(max_tokens: int) -> dict:
    return {"messages": [{"role": "user", "content": "Write a long story about a robot who learns to paint."}],
            "max_tokens": max_tokens, "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}


def llm_direct(session, chute: dict, payload: dict) -> Stream:
    """A streamed chat completion straight from the instance."""
    url = chute["url"] + chute["cords"].get(CHAT_PATH, CHAT_PATH)

    async def stream() -> tuple[int, float, float]:
        started = time.perf_counter()
        first, parts = None, []
        async with session.post(url, json=payload) as response:
            assert response.status == 200, await response.text()
            async for part in response.content.iter_any():
                first = first or time.perf_counter()
                parts.append(part)
        ended = time.perf_counter()
        usage, pieces = _sse_tokens(b"".join(parts).decode())
        return usage or pieces, ended - started, (first or ended) - started

    return stream


def llm_via(dendrite, target, chute: dict, payload: dict) -> Stream:
    """The same completion as a streamed ``Invoke`` through the miner's axon."""
    from protocol.chutes import Invoke

    path = chute["cords"].get(CHAT_PATH, CHAT_PATH)

    async def stream() -> tuple[int, float, float]:
        started = time.perf_counter()
        first, parts, final = None, [], None
        synapse = Invoke(chute_id=chute["chute_id"], path=path, payload=payload)
        async for chunk in dendrite.stream(target, synapse, timeout=600):
            first = first or time.perf_counter()
            parts.append(chunk.data or "")
            final = chunk
        ended = time.perf_counter()
        assert final is not None and final.done and final.error is None, final
        usage, pieces = _sse_tokens("".join(parts))
        return (final.usage.completion_tokens if final.usage else 0) or usage or pieces, ended - started, (first or ended) - started

    return stream


async def llm_rates(streams: dict[str, Stream], requests: int) -> dict[str, dict[str, float]]:
    """Per path: completion tokens/s over ``requests`` completions (after one warm-up each: first
    generations are slow), the paths taking turns; the median time to first token; the tokens."""
    for stream in streams.values():
        await stream()
    totals: dict[str, list] = {name: [0, 0.0, []] for name in streams}  # tokens, seconds, times to first token
    for index in range(requests):
        for name in _rotated(list(streams), index):
            tokens, seconds, ttft = await streams[name]()
            totals[name][0] += tokens
            totals[name][1] += seconds
            totals[name][2].append(ttft)
    return {name: {"tok_s": tokens / seconds, "ttft_s": statistics.median(ttfts), "tokens": tokens}
            for name, (tokens, seconds, ttfts) in totals.items()}


async def measure(args, wallet_path: str, llm_ref: str, llm_note: str) -> dict:
    import contextlib

    import aiohttp

    from bench.miner_runtimes import MinerChild, cold_starts, env_figures, figures, start_sandboxed
    from bench.protocol import wallets
    from protocol.dendrite import Dendrite, Target

    validator, _ = wallets(wallet_path)
    refs = [args.echo_ref, llm_ref]
    command = [sys.executable, __file__, "--role", "miner", "--wallets", wallet_path, "--refs", *refs]
    settings = {"BENCH_TOKEN_RATE": str(args.token_rate)}
    settings.update({name: os.environ[name] for name in ("BENCH_LLM_MODEL",) if name in os.environ})
    env = dict(os.environ, **settings)
    results: dict = {"llm": llm_note, "echo_ref": args.echo_ref, "llm_ref": llm_ref}
    with contextlib.ExitStack() as children:
        process = MinerChild("process", command, ROOT, env)
        children.callback(process.close)
        miner = await process.started(refs)
        echo, llm = miner["chutes"][args.echo_ref], miner["chutes"][llm_ref]
        sandboxed, boxed = None, None
        if args.runtime_compare:  # the sandboxed miner, started once the first one is ready
            sandboxed, boxed, why = await start_sandboxed(command, refs, ROOT, Path(wallet_path) / "bundle", settings, env)
            if sandboxed is not None:
                children.callback(sandboxed.close)
            if why:
                results["sandbox_unavailable"] = why
        target = Target(miner["hotkey"], miner["axon"])
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4)
        async with contextlib.AsyncExitStack() as stack:
            session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector, auto_decompress=False))
            dendrite = await stack.enter_async_context(Dendrite(validator))
            payload = chat_payload(args.max_tokens)
            echo_calls = {"direct": echo_direct(session, echo), "via": echo_via(dendrite, target, echo)}
            llm_streams = {"direct": llm_direct(session, llm, payload), "via": llm_via(dendrite, target, llm, payload)}
            if boxed is not None:  # the same requests through the sandboxed miner, in the same rounds
                boxed_target = Target(boxed["hotkey"], boxed["axon"])
                boxed_echo, boxed_llm = boxed["chutes"][args.echo_ref], boxed["chutes"][llm_ref]
                unix = await stack.enter_async_context(aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=boxed_echo["socket"], limit=0), auto_decompress=False))
                echo_calls.update(sandboxed=echo_via(dendrite, boxed_target, boxed_echo),
                                  sandboxed_direct=echo_direct(unix, boxed_echo))
                llm_streams["sandboxed"] = llm_via(dendrite, boxed_target, boxed_llm, payload)
            rates = await echo_rates(echo_calls, args.echo_n, args.repeats)
            results["echo_direct_rps"], results["echo_via_miner_rps"] = rates["direct"], rates["via"]
            results["echo_ratio"] = rates["via"] / rates["direct"]
            streams = await llm_rates(llm_streams, args.llm_requests)
            direct, via = streams["direct"], streams["via"]
            results.update({"direct_tok_s": direct["tok_s"], "via_miner_tok_s": via["tok_s"], "ratio": via["tok_s"] / direct["tok_s"],
                            "llm_tokens_per_side": direct["tokens"], "ttft_direct_s": direct["ttft_s"],
                            "ttft_via_miner_s": via["ttft_s"]})
            results["cold_start_s"] = echo["cold_start_s"]
            results["llm_cold_start_s"] = llm["cold_start_s"]
            if sandboxed is not None and boxed is not None:
                cold = await cold_starts({"process": process, "sandboxed": sandboxed}, args.echo_ref, args.cold_starts)
                results.update(figures(rates, streams, cold))
                try:
                    results.update(env_figures(await cold_starts({"process": process, "sandboxed": sandboxed},
                                                                 args.echo_ref, args.cold_starts, "cold-env")))
                except RuntimeError as error:  # no package index reachable: reported, not a target
                    results["cold_start_env_unavailable"] = str(error)
                results["llm_cold_start_sandboxed_s"] = boxed_llm["cold_start_s"]
                results["sandbox_caps"] = all(chute["caps"] for chute in boxed["chutes"].values())
    return results


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
    parser.add_argument("--runtime-compare", action=argparse.BooleanOptionalAction, default=True,
                        help="also run a sandboxed miner and compare it with the process one (default: yes)")
    parser.add_argument("--cold-starts", type=int, default=5, help="fresh echo instances per runtime (the median is reported)")
    parser.add_argument("--role", choices=("miner",), help=argparse.SUPPRESS)
    parser.add_argument("--wallets", help=argparse.SUPPRESS)
    parser.add_argument("--refs", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--bundle", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        uvloop.run(serve_miner(args.wallets, args.refs, args.bundle))
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
    from bench.miner_runtimes import RUNTIME_TARGETS, checks
    from bench.protocol import wallets
    from bench.report import print_last_line, print_table, verdict

    with tempfile.TemporaryDirectory(prefix="canopy-bench-miner-") as wallet_path:
        wallets(wallet_path)
        gc.freeze()
        results = uvloop.run(measure(args, wallet_path, llm_ref, note))
    targets = {**TARGETS, **RUNTIME_TARGETS}
    verdict(results, targets, {"ratio": results["ratio"] >= TARGETS["ratio"], **checks(results, args.runtime_compare)})
    shown = {name: (f">= {target:g}", results["met"].get(name)) for name, target in targets.items()}
    print_table(f"canopy miner benchmark (LLM: {note})", results, shown)
    print_last_line(results, digits=4)


if __name__ == "__main__":
    main()
