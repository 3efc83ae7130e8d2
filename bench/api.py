"""Benchmark of the public API: the same upstream called directly and through the gateway, in one run.

Run from the repo root: ``.venv/bin/python bench/api.py [--concurrency 32] [--seconds 10]``.
Three processes, all on uvloop, all on 127.0.0.1:

- the miner (this script re-run with ``--role miner``): an ``Axon`` with ``ChutesService``
  and ``InstanceManager`` as ``neurons/miner.py`` wires them, hosting ``bench.api_children:fast_chute``
  (an OpenAI chat chute that answers at once: a fixed JSON completion, or a stream of
  ``--stream-tokens`` chunks with no sleeps) in its own instance process;
- the API (``--role api``): ``api.app.build_app`` assembled as ``neurons/api.py`` does it
  (``KeyStore`` on the validator store's SQLite engine, ``MemoryRateLimiter``,
  ``MinerDirectory`` over the dendrite, ``Upstream``, ``ApiConfig``) on uvicorn with one
  worker. Every request pays the real path: bearer auth (a SELECT), body validation, the
  global rate rule (set high enough never to refuse), one credit reserved (an UPDATE on a
  key with finite credits), the signed ``Invoke`` to the miner, the request-log row and the
  organic ``Invocation`` row (both SQLite INSERTs in background tasks);
- the load generator (this process): aiohttp, ``--concurrency`` workers on keep-alive
  connections for the HTTP paths, the same number of concurrent ``Dendrite.stream`` calls
  for the miner path.

Paths, all ending at the same instance with the same chat body:

- ``instance``: plain HTTP POST straight to the chute instance (no auth at all);
- ``miner``: a signed ``Invoke`` synapse through ``Dendrite.stream`` to the miner's axon,
  exactly what ``api.upstream`` sends (dendrite -> axon -> ChutesService -> instance);
- ``api``: ``POST /v1/chat/completions`` to the gateway with ``Authorization: Bearer``.

``direct_rps`` is the miner path, the same upstream the API itself calls, so every
``added_*`` figure is the gateway's own cost (API minus miner path);
``direct_instance_rps`` is reported too, for the cost of the miner hop.

Figures:

- ``*_rps``: completed non-streaming requests per second over ``--seconds`` with
  ``--concurrency`` in flight (after ``--warmup`` seconds of the same load, not counted);
  ``*_loaded_p50_ms`` the median latency under that load (mostly queueing: at saturation
  it is about concurrency / rps). The client runs on the same cores, so these are rates
  of the whole box, not of one server process.
- ``added_p50_ms`` / ``added_p99_ms``: per-request overhead, unloaded: ``--latency-n``
  sequential requests per path, the paths interleaved request by request; the API's
  median (99th percentile) minus the miner path's. ``*_p50_ms`` gives each path's own.
- ``stream_ttft_added_ms``: median time to the first content byte of streamed chat
  completions (sequential, interleaved, ``--stream-n`` each), API minus miner path;
  ``stream_ttft_*_ms`` are each path's medians.
- ``errors``: failed requests in the measured phases (any non-200); must be 0.
- ``litellm_rps``, ``litellm_p50_ms``, ``litellm_added_p50_ms``: LiteLLM's proxy (one worker,
  a master key, no database) in front of the same instance, measured like the others when
  a LiteLLM is found: ``--litellm-python``, else ``.venv-litellm`` (``./run.sh bench api
  --litellm`` makes it from ``bench/requirements-litellm.txt``: it pins rich and FastAPI
  differently from ours), else this interpreter; ``litellm`` says what ran or why not.
  Its added latency is against the instance (what it fronts), the API's against the miner path.

- ``request_log_rows`` / ``invocation_rows`` / ``credits_spent``: read from the API's
  SQLite file after the run (warm-up and latency phases included): one of each per answer.
- ``api_cpu_ms_per_request``: the API process's CPU time while serving (all its threads,
  start-up excluded) over the requests it logged: what one request costs the gateway, whatever the
  other processes on the box are doing. ``miner_cpu_ms_per_invoke`` is the same for the
  miner process (axon + ChutesService, not its instance) over the ``miner_invokes`` it
  answered (the miner path's and the API's calls, every phase): both paths pay it.

Targets (a 2-core box): ``api_rps >= 500``, ``added_p50_ms <= 3``; ``errors`` must be 0.
``--api-ref REF`` measures the ``api/`` package of a git ref (``git archive``) and
``--api-src DIR`` the one under a folder (an A/B copy of a change), instead of the working
tree's; ``api_tree`` says which ran. ``--profile FILE`` writes a cProfile of the API
process's event-loop thread (aiosqlite's work runs in its own threads and is not in it).
Prints a rich table, then as its last line one JSON object with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This file is named like the package it measures: drop bench/ from the import path and put
# the repo root first, so `api` is the package (the instance imports this file too).
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT)] + [entry for entry in sys.path if Path(entry or ".").resolve() not in (HERE, ROOT)]

from bench.api_children import CHAT_PATH, MODEL, chat_body, serve_api, serve_miner  # noqa: E402

TARGETS = {"api_rps": 500.0, "added_p50_ms": 3.0}

# --- the load generator (this process) ------------------------------------------------------------


class Paths:
    """One call of each path: ``await paths.call(name, stream)`` -> seconds to the first content byte."""

    def __init__(self, session, dendrite, miner: dict, api: dict) -> None:
        from protocol.chutes import Invoke
        from protocol.dendrite import Target

        self.session, self.dendrite = session, dendrite
        self.target = Target(miner["hotkey"], miner["axon"])
        self.instance_url = miner["instance"] + CHAT_PATH
        self.api_url = api["url"] + CHAT_PATH
        self.auth = {"authorization": f"Bearer {api['key']}"}
        self.invoke = {stream: Invoke(chute_id=miner["chute_id"], path=CHAT_PATH, payload=chat_body(stream),
                                      stream=stream) for stream in (False, True)}
        self.bodies = {stream: json.dumps(chat_body(stream)).encode() for stream in (False, True)}
        self.extra: dict[str, tuple[str, dict[str, str]]] = {}  # other HTTP paths: name -> (url, headers)
        self.answered: dict[str, int] = {}  # completed calls per path, every phase (the miner's CPU share)

    async def call(self, name: str, stream: bool = False) -> float:
        started = time.perf_counter()
        if name == "miner":
            first, final = None, None
            async for chunk in self.dendrite.stream(self.target, self.invoke[stream], timeout=30):
                if first is None and chunk.data:
                    first = time.perf_counter()
                final = chunk
            if final is None or not final.done or final.error is not None or (final.status or 200) >= 400:
                raise RuntimeError(f"miner path failed: {final}")
            self.answered[name] = self.answered.get(name, 0) + 1
            return (first or time.perf_counter()) - started
        url, auth = {"instance": (self.instance_url, {}), "api": (self.api_url, self.auth)}.get(name) or self.extra[name]
        headers = {"content-type": "application/json", **auth}
        async with self.session.post(url, data=self.bodies[stream], headers=headers) as response:
            first = None
            async for _ in response.content.iter_any():
                first = first or time.perf_counter()
            if response.status != 200:
                raise RuntimeError(f"{name} answered {response.status}")
        self.answered[name] = self.answered.get(name, 0) + 1
        return (first or time.perf_counter()) - started


async def load(paths: Paths, name: str, concurrency: int, seconds: float) -> tuple[int, int, list[float]]:
    """(ok, errors, latencies) of ``concurrency`` workers calling ``name`` for ``seconds``."""
    latencies: list[float] = []
    failed = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal failed
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await paths.call(name)
            except Exception:  # noqa: BLE001 - counted
                failed += 1
                continue
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), failed, latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def measure(args, miner: dict, api: dict, litellm_url: str | None, bar) -> dict:
    import aiohttp

    from bench.protocol import wallets
    from protocol.dendrite import Dendrite

    validator, _ = wallets(args.wallets)
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    results: dict = {}
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session, \
            Dendrite(validator) as dendrite:
        paths = Paths(session, dendrite, miner, api)
        names = ["instance", "miner", "api"]
        if litellm_url:
            paths.extra["litellm"] = (litellm_url + CHAT_PATH, {"authorization": f"Bearer {LITELLM_KEY}"})
            names.append("litellm")
        errors = 0
        task = bar.add_task("throughput", total=len(names))
        for name in names:
            bar.update(task, description=f"{name}: warm-up {args.warmup:g}s, then {args.seconds:g}s at c={args.concurrency}")
            await load(paths, name, args.concurrency, args.warmup)
            gc.collect()
            ok, failed, latencies = await load(paths, name, args.concurrency, args.seconds)
            errors += failed
            key = "direct_instance" if name == "instance" else name
            results[f"{key}_rps"] = ok / args.seconds
            results[f"{key}_loaded_p50_ms"] = pct(latencies, 0.5) * 1e3
            bar.advance(task)
        results["direct_miner_rps"] = results["miner_rps"]
        results["direct_rps"] = results.pop("miner_rps")
        results["direct_miner_loaded_p50_ms"] = results.pop("miner_loaded_p50_ms")

        for stream, n, label in ((False, args.latency_n, "latency"), (True, args.stream_n, "stream ttft")):
            samples: dict[str, list[float]] = {name: [] for name in names}
            task = bar.add_task(label, total=n)
            for index in range(n):
                order = list(samples) if index % 2 == 0 else list(reversed(samples))
                for name in order:
                    started = time.perf_counter()
                    try:
                        ttft = await paths.call(name, stream)
                    except Exception:  # noqa: BLE001 - counted
                        errors += 1
                        continue
                    samples[name].append(ttft if stream else time.perf_counter() - started)
                bar.advance(task)
            if stream:
                for name, values in samples.items():
                    results[f"stream_ttft_{name}_ms"] = statistics.median(values) * 1e3
                results["stream_ttft_added_ms"] = results["stream_ttft_api_ms"] - results["stream_ttft_miner_ms"]
            else:
                for name, values in samples.items():
                    results[f"{name}_p50_ms"] = pct(values, 0.5) * 1e3
                    results[f"{name}_p99_ms"] = pct(values, 0.99) * 1e3
                results["added_p50_ms"] = results["api_p50_ms"] - results["miner_p50_ms"]
                results["added_p99_ms"] = results["api_p99_ms"] - results["miner_p99_ms"]
                if litellm_url:
                    results["litellm_added_p50_ms"] = results["litellm_p50_ms"] - results["instance_p50_ms"]
        results["errors"] = errors
        results["miner_invokes"] = paths.answered.get("miner", 0) + paths.answered.get("api", 0)
    return results


# --- optional: LiteLLM's proxy in front of the same instance ---------------------------------------


LITELLM_KEY = "sk-canopy-bench"  # the proxy's master key: it checks a bearer key as the API does


def find_litellm(explicit: str | None) -> tuple[str | None, str]:
    """(the Python that has LiteLLM's proxy, a note); (None, why not) when none has it."""
    candidates = [explicit] if explicit else [str(ROOT / ".venv-litellm" / "bin" / "python"), sys.executable]
    for python in candidates:
        if not Path(python).exists():
            continue
        probe = subprocess.run([python, "-c", "import litellm.proxy.proxy_server, importlib.metadata as m; "
                                "print(m.version('litellm'))"], capture_output=True, text=True, timeout=120)
        if probe.returncode == 0:
            return python, f"litellm {probe.stdout.strip()} ({python})"
    return None, "not installed (./run.sh bench api --litellm makes .venv-litellm)"


def start_litellm(python: str, instance_url: str, workdir: Path) -> tuple[subprocess.Popen | None, str]:
    """LiteLLM's proxy (one worker, a master key, no database) in front of the instance."""
    import urllib.request

    from bench.protocol import free_ports

    port = free_ports(1)[0]
    config = workdir / "litellm.yaml"
    config.write_text(f"model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n"
                      f"      api_base: {instance_url}/v1\n      api_key: none\n"
                      f"general_settings:\n  master_key: {LITELLM_KEY}\n"
                      # LiteLLM's own benchmark settings (docs.litellm.ai/docs/benchmarks): no callbacks, no retries
                      "litellm_settings:\n  callbacks: []\n  num_retries: 0\n  request_timeout: 30\n"
                      "  set_verbose: false\n  telemetry: false\n  turn_off_message_logging: true\n")
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    with open(workdir / "litellm.log", "wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen([python, "-m", "litellm.proxy.proxy_cli", "--config", str(config), "--host",
                                    "127.0.0.1", "--port", str(port), "--num_workers", "1"], cwd=workdir, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health/liveliness", timeout=1)
            return process, f"http://127.0.0.1:{port}"
        except Exception:  # noqa: BLE001 - still starting
            time.sleep(0.5)
    process.kill()
    tail = (workdir / "litellm.log").read_text(errors="replace").strip().splitlines()[-3:]
    return None, " | ".join(tail)


# --- main --------------------------------------------------------------------------------------------


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight during the throughput phases")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per path")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of the same load before each path, not counted")
    parser.add_argument("--latency-n", type=int, default=300, help="sequential requests per path for added_p50/p99")
    parser.add_argument("--stream-n", type=int, default=100, help="sequential streamed requests per path for TTFT")
    parser.add_argument("--stream-tokens", type=int, default=16, help="content chunks per streamed answer")
    parser.add_argument("--profile", help="write a cProfile of the API process (the measured phases) to this file")
    parser.add_argument("--api-ref", help="measure the api/ package of this git ref (e.g. HEAD) instead of the working tree's")
    parser.add_argument("--api-src", help="measure the api/ package under this folder (an A/B copy) instead")
    parser.add_argument("--litellm", action="store_true",
                        help="measure LiteLLM's proxy too, and fail if it cannot (run.sh installs .venv-litellm)")
    parser.add_argument("--litellm-python", help="the Python whose environment has litellm[proxy]")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM even when it is installed")
    parser.add_argument("--role", choices=("miner", "api"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        config = json.loads(Path(args.config).read_text())
        if config.get("api_src"):  # the api package of a git ref, ahead of the working tree's
            sys.path.insert(0, config["api_src"])
        uvloop.run(serve_miner(config) if args.role == "miner" else serve_api(config))
        return

    from rich.console import Console

    from bench.children import Child, write_config
    from bench.protocol import wallets
    from bench.report import print_last_line, print_table, progress

    os.environ["BENCH_STREAM_TOKENS"] = str(args.stream_tokens)  # inherited by the miner and its instance
    console = Console(stderr=True)
    litellm_python, litellm_note = (None, "skipped (--no-litellm)") if args.no_litellm else \
        find_litellm(args.litellm_python)
    if args.litellm and litellm_python is None:
        parser.error(f"--litellm: LiteLLM's proxy was not found: {litellm_note}")
    with tempfile.TemporaryDirectory(prefix="canopy-bench-api-") as workdir:
        work = Path(workdir)
        args.wallets = workdir
        wallets(workdir)
        children, litellm_process = [], None
        try:
            with console.status("starting the miner (axon + instance)"):
                miner_child = Child(Path(__file__), "miner", write_config(work / "miner.json", {"wallets": workdir}))
                children.append(miner_child)
                miner = miner_child.hello
                if miner["ready"] != "ready" or miner["refused"]:
                    raise RuntimeError(f"the instance did not start: {miner['error'] or miner['refused']}")
            api_src = str(Path(args.api_src).resolve()) if args.api_src else None
            if args.api_ref:
                api_src = str(work / "api-src")
                os.makedirs(api_src)
                archive = subprocess.run(["git", "archive", args.api_ref, "api"], cwd=ROOT, capture_output=True, check=True)
                subprocess.run(["tar", "-x", "-C", api_src], input=archive.stdout, check=True)
            with console.status("starting the API"):
                api_config = {"wallets": workdir, "axon": miner["axon"], "api_src": api_src,
                              "profile": str(Path(args.profile).resolve()) if args.profile else None}
                api_child = Child(Path(__file__), "api", write_config(work / "api.json", api_config))
                children.append(api_child)
            litellm_url = None
            if litellm_python:
                with console.status("starting LiteLLM's proxy"):
                    litellm_process, started = start_litellm(litellm_python, miner["instance"], work)
                litellm_url = started if litellm_process else None
                if litellm_process is None:
                    litellm_note = f"its proxy did not start: {started}"
                    if args.litellm:
                        raise RuntimeError(f"--litellm: {litellm_note}")
            gc.collect()
            gc.freeze()
            with progress(console) as bar:
                results = uvloop.run(measure(args, miner, api_child.hello, litellm_url, bar))
            for child in (api_child, miner_child):  # each prints its closing figures when its stdin closes
                child.process.stdin.close()
                tail = [line for line in child.process.stdout.read().splitlines() if line.strip()]
                if tail:
                    results.update(json.loads(tail[-1]))
            if results.get("miner_cpu_ms") is not None:
                results["miner_cpu_ms_per_invoke"] = results.pop("miner_cpu_ms") / max(1, results["miner_invokes"])
        finally:
            if litellm_process is not None:
                litellm_process.terminate()
                litellm_process.wait(timeout=30)
            for child in reversed(children):
                child.close()
    results = {"concurrency": args.concurrency, "seconds": args.seconds, "cpus": os.cpu_count(),
               "api_tree": args.api_src or args.api_ref or "worktree", **results,
               "litellm": litellm_note}
    if "litellm_rps" not in results:
        results["litellm_rps"] = None
    elif results["litellm_rps"]:
        results["api_vs_litellm_rps"] = results["api_rps"] / results["litellm_rps"]
    checks = {"api_rps": (f">= {TARGETS['api_rps']:g}", results["api_rps"] >= TARGETS["api_rps"]),
              "added_p50_ms": (f"<= {TARGETS['added_p50_ms']:g}", results["added_p50_ms"] <= TARGETS["added_p50_ms"]),
              "errors": ("0", results["errors"] == 0)}
    results["targets"] = TARGETS
    results["meets_targets"] = all(met for _, met in checks.values())
    print_table("canopy API benchmark (same upstream: instance / miner path / API)", results, checks)
    print_last_line(results, digits=3)


if __name__ == "__main__":
    main()
