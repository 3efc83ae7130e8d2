"""Benchmark of GraVal beside serving: a device re-verified while its instance serves a steady load.

Run from the repo root: ``./run.sh bench graval_serving`` (or ``.venv/bin/python
bench/graval_serving.py [--wiring neuron|graval-inventory] [--prover-threads N] [--rate 60]``;
about 80 s on 2 cores). Three processes on 127.0.0.1, timed
with ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every process on Linux):

- the miner (this script re-invoked with ``--role miner``): one axon with ``GravalService``
  then ``ChutesService`` over an ``InstanceManager``, attached in the order
  ``neurons/miner.py`` attaches them, on one CPU pseudo-device of ``--memory-mb`` MiB; the
  instance is a real process of the echo chute (``examples/echo_chute.py``, the miner's
  child, as it hosts any chute). ``reserved=`` reports ``--reserved-share`` (3/4) of the
  device while the instance runs and 0 while it is stopped: the pseudo-device has no
  NVML reading, so a fixed share stands in for the weights an instance holds on a GPU.
  ``--wiring graval-inventory`` attaches ``GravalService``'s Inventory handler once more,
  last (devices and loads, no chutes): with ``neuron`` wiring ``ChutesService``'s reply
  replaces it, and that reply carries no ``loads``;
- the load (``--role load``): ``--clients`` clients, each a loop of signed ``Invoke``
  calls of the echo cord through the miner's axon (a user's request's path), paced
  together at ``--rate`` per second (a client that falls behind skips its missed slots,
  never bursts), each bounded by ``--request-timeout``; plus ``--direct-clients`` at the
  same pace each, calling the instance's port straight (plain HTTP, not through the
  miner: it tells a stall of the miner's process from one of the instance or the box).
  Every request is recorded: sent, ended, success (HTTP 200 and, through the miner, a
  final ``done`` chunk with status 200, the echoed text in both cases);
- the validator (this process, at ``--validator-nice`` 10: it stands for another
  machine and yields the cores): a ``GravalVerifier`` over the devnet ``cpu`` row of the
  GPU table at ``--n``/``--b`` (512/8 rather than the row's 1024/16, so a whole-device
  proof takes seconds, not minutes, on a CPU; the row's 0.001-100x window).

Timeline: load starts; ``--warm-s`` unmeasured; the **before** window (``--before-s``); the
**proof** window ``[a, b]``: one ``verify_miner`` call, from the call to its return
(Inventory with the device's load, live reading, Prove/fill, Access, Open, the
validator's check); ``--after-s``; the **control** window, as long as the proof window,
with no proof (the box's own noise under the same definitions); ``--after-s``; the
**baseline** window, the old way: from the order to stop the instance (SIGTERM, its
graceful shutdown) through a whole-device proof (the miner now reports nothing reserved)
to the moment the miner has a new instance ready; ``--after-s`` more.

Figures (through the miner unless named ``direct_``), for a window ``[a, b]`` and the
successful completions ``t_1 < t_2 < ...`` of the whole run:

- ``normal_gap_s``: the longest gap between two successive successful completions both in
  the before window (the load's pacing and jitter, GC pauses, scheduling);
- ``serving_downtime_s`` (target 0): the sum, over every gap ``(t_i, t_i+1)`` that
  overlaps the proof window (``t_i+1 > a`` and ``t_i < b``; the whole gap counts, its part
  outside the window too), of ``max(0, t_i+1 - t_i - g)`` with ``g = max(normal_gap_s,
  --outage-gap-s)`` (1 s): the time with no successful request beyond what counts as an
  outage. Stalls shorter than that are the proof and the instance sharing the box's cores
  (latency, shown as the longest gap and p99), not downtime: the instance never stops. A gap no later success closes is
  closed at the load's last completion (counted, never lost). ``control_downtime_s`` is
  the same sum over the control window: what the definition reads with no proof at all;
- ``serving_failed_requests`` (target 0): failed requests (error, non-200, timeout,
  wrong body) that overlapped the proof window (sent before ``b``, ended after ``a``);
- ``serving_proof_ok`` (target true): the verdict is ``ok`` and ``serving`` (proved
  beside the instance, on the memory it leaves free); ``serving_proven_fraction`` and
  ``serving_multiplier`` as the validator scores them; ``inventory_reports_load``: the
  miner's Inventory carried the device's ``reserved_bytes`` (read just before the warm-up);
- ``serving_longest_gap_s``; ``serving_rate_ratio``: successful completions per second in
  the proof window over the before window's (informational; null for a window under 1 s,
  a refused proof's); the control window lasts at least 1 s; latency p50/p99 of the
  requests completed in each window;
- ``baseline_downtime_s`` / ``baseline_failed_requests`` (informational): the same sum and
  count over the baseline window; ``baseline_proof_s``, ``baseline_restart_s`` (the new
  instance's spawn-to-ready time);
- ``serving_fill_slowdown`` / ``serving_access_slowdown``: seconds per multiply-accumulate
  of the serving proof's phases over the whole-device proof's on the idle device (instance
  stopped): the share of ``serving_slack`` (shown) that sharing the device used;
- ``instance_cpu_share_*`` / ``miner_cpu_share_*``: CPU seconds per wall second of the
  instance and of the miner (prover included) in the before and proof windows (/proc).

``--prover-threads N`` caps the miner's prover (its BLAS threads and the backend's
element-wise pool) so that it leaves cores to the instance, as a GPU prover leaves the
host's. Prints a rich table, then as its last line one JSON object with every figure,
``targets`` and ``meets_targets`` (true only if every target holds). Exits 0 whenever it
measured; a missed target shows in the JSON, not in the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

# bench/ holds files named like packages (miner.py, protocol.py): drop it from the import
# path and put the repo root first, so `miner`, `protocol` are the packages.
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT)] + [entry for entry in sys.path if Path(entry or ".").resolve() not in (HERE, ROOT)]

TARGETS = {"serving_downtime_s": 0.0, "serving_failed_requests": 0, "serving_proof_ok": True}
ECHO_REF = "examples.echo_chute:chute"
ECHO_TEXT = "hello canopy"
NETUID = 1
MIB = 1 << 20


# --- wallets and the chain every process shares ------------------------------------------------


def bench_wallets(path: str) -> tuple[Any, Any, Any]:
    """(validator, miner, client): the client (the load, a gateway's place) has its own hotkey."""
    from node.wallets import create_devnet_wallet

    return tuple(create_devnet_wallet(f"serving-{name}", "default", path) for name in ("validator", "miner", "client"))


def bench_chain(validator: Any, miner: Any, client: Any) -> Any:
    from bench.protocol import BenchChain
    from chain.base import Metagraph, Neuron

    chain = BenchChain(validator, miner)
    client_neuron = Neuron(2, client.hotkey.ss58_address, client.coldkeypub.ss58_address, 1000.0, True, None)
    chain.graph = Metagraph(NETUID, 1, chain.graph.neurons + (client_neuron,))
    return chain


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (/proc), None if unreadable."""
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the miner (child process) --------------------------------------------------------------------


async def serve_miner(args: argparse.Namespace) -> None:
    """The miner, wired like neurons/miner.py; stdin lines ``stop``/``start`` stop and restart
    the instance (the baseline), each answered by one JSON line; EOF ends it."""
    import gc

    from loguru import logger

    from bench.protocol import free_ports
    from protocol.options import AxonSettings
    from miner.chutes_service import ChutesService
    from miner.graval.service import GravalService
    from miner.hosting import ChuteEntry, HostingConfig, describe_chute, plan_hosting
    from miner.instances import InstanceManager
    from miner.inventory import cpu_device
    from protocol.axon import Axon
    from protocol.graval.synapses import Inventory

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    validator, miner, client = bench_wallets(args.wallets)
    device = cpu_device(memory_bytes=args.memory_mb * MIB, salt=f"bench-graval-serving:{args.wallets}")
    state = {"running": False}

    def reserved(spec: Any) -> int:  # what the instance holds: a fixed share while it runs
        return int(args.reserved_share * spec.memory_bytes) if state["running"] else 0

    config = HostingConfig(chutes=[ChuteEntry(ref=args.echo_ref)])
    plan = await plan_hosting(config, [device], describe=lambda ref: describe_chute(ref, cwd=ROOT))
    if plan.refused:
        raise SystemExit(f"the miner refused the chute: {[(r.ref, r.reason) for r in plan.refused]}")
    low = free_ports(1)[0]

    def manager() -> InstanceManager:
        return InstanceManager(plan.instance_specs(), port_range=(low, min(65535, low + 50)), cwd=ROOT,
                               log_dir=Path(args.wallets) / "logs", start_timeout_s=120)

    instances = manager()
    axon = Axon(miner, bench_chain(validator, miner, client), NETUID,
                AxonSettings(ip="127.0.0.1", port=free_ports(1)[0]), metagraph_refresh_s=3600)
    service = GravalService
    if args.prover_threads:  # the element-wise passes' pool (the GEMM's threads: OPENBLAS_NUM_THREADS, set by the parent)
        class CappedGravalService(GravalService):
            def backend_for(self, device: Any) -> Any:
                backend = super().backend_for(device)
                backend.threads = args.prover_threads
                return backend

        service = CappedGravalService
    graval = service([device], reserved=reserved).attach(axon)
    chutes = ChutesService(instances, plan.hosted_chutes(), refused=plan.refused, devices=[device],
                           loads=graval.loads).attach(axon)  # as neurons/miner.py wires it
    if args.wiring == "graval-inventory":
        axon.attach(Inventory, graval.inventory)
    await instances.start()
    state["running"] = True
    await axon.start(publish=False)
    gc.collect()
    gc.freeze()

    def described() -> dict:
        [instance] = chutes.manager.instances
        return {"ready": instance.state.value, "error": instance.last_error, "cold_start_s": instance.cold_start_s,
                "url": instance.url, "pid": instance.process.pid if instance.process else None, "at": time.monotonic()}

    [hosted] = plan.hosted
    echo_path = next(cord.path for cord in hosted.info.cords if "/echo" in (cord.path, cord.public_api_path))
    print(json.dumps({"axon": axon.url, "hotkey": axon.hotkey, "chute_id": hosted.info.chute_id, "uuid": device.uuid,
                      "memory_bytes": device.memory_bytes, "echo_path": echo_path, **described()}), flush=True)
    loop = asyncio.get_running_loop()
    while command := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
        if command == "stop":
            await chutes.manager.stop()
            state["running"] = False
            print(json.dumps({"stopped": time.monotonic()}), flush=True)
        elif command == "start":
            chutes.manager = manager()  # a stopped manager does not start again
            await chutes.manager.start()
            state["running"] = True
            print(json.dumps(described()), flush=True)
    await axon.stop()
    await chutes.manager.stop()


# --- the load (child process) ---------------------------------------------------------------------


async def generate_load(args: argparse.Namespace) -> None:
    """Paced calls until stdin closes (a line ``direct-off`` stops the direct clients first);
    then every record as one JSON line: ``[sent, ended, ok, error, path]`` (monotonic
    seconds; path ``miner`` or ``direct``)."""
    import gc

    import aiohttp

    from protocol.chutes import Invoke
    from protocol.dendrite import Dendrite, Target

    miner = json.loads(args.miner)
    target = Target(miner["hotkey"], miner["axon"])
    _, _, client = bench_wallets(args.wallets)
    records: list[tuple[float, float, bool, str, str]] = []
    stopping = {"miner": asyncio.Event(), "direct": asyncio.Event()}
    interval = args.clients / args.rate  # every client, either path, sends at this pace
    payload = {"text": ECHO_TEXT}
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)

    async def via_miner(dendrite: Dendrite) -> str:
        synapse = Invoke(chute_id=miner["chute_id"], path="/echo", payload=payload)
        chunks = [chunk async for chunk in dendrite.stream(target, synapse, timeout=args.request_timeout)]
        last = chunks[-1] if chunks else None
        if last is None or not last.done or last.status != 200 or ECHO_TEXT not in "".join(c.data or "" for c in chunks):
            return f"bad reply: {last!r}"[:200]
        return ""

    async def direct(session: aiohttp.ClientSession) -> str:
        async with session.post(miner["url"] + miner["echo_path"], json=payload, timeout=timeout) as response:
            body = await response.read()
            return "" if response.status == 200 and ECHO_TEXT.encode() in body else f"http {response.status}"

    async def one(path: str, call: Any) -> None:
        sent = time.monotonic()
        try:
            error = await call()
        except Exception as failure:  # noqa: BLE001 - every failure is a record
            error = getattr(failure, "type", "") or type(failure).__name__
        records.append((sent, time.monotonic(), not error, error, path))

    async def client_loop(path: str, call: Any, offset: float) -> None:
        due = time.monotonic() + offset
        stop = stopping[path]
        while not stop.is_set():
            delay = due - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return
                except TimeoutError:
                    pass
            await one(path, call)
            due += interval
            now = time.monotonic()
            if due < now:  # behind: skip the missed slots rather than burst to catch up
                due += -(-(now - due) // interval) * interval

    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    async with Dendrite(client) as dendrite, aiohttp.ClientSession(connector=connector) as session:
        calls = {"miner": lambda: via_miner(dendrite), "direct": lambda: direct(session)}
        for path, call in calls.items():  # open the connections before the clock starts
            await one(path, call)
        records.clear()
        gc.collect()
        gc.freeze()
        total = args.clients + args.direct_clients
        tasks = [asyncio.create_task(client_loop("miner" if index < args.clients else "direct",
                                                 calls["miner" if index < args.clients else "direct"],
                                                 index * interval / total))
                 for index in range(total)]
        print(json.dumps({"started": time.monotonic()}), flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip() == "direct-off":
                stopping["direct"].set()
                print(json.dumps({"direct_off": time.monotonic()}), flush=True)
        for event in stopping.values():
            event.set()
        await asyncio.gather(*tasks)
    print(json.dumps(records), flush=True)


# --- the figures (pure) ---------------------------------------------------------------------------


def gaps_over(times: Sequence[float], start: float, end: float, closed_at: float) -> list[float]:
    """Gaps between successive successes ``times`` (sorted) that overlap ``[start, end]``;
    a last gap not closed by a success is closed at ``closed_at`` (the end of the load)."""
    points = list(times)
    if not points or points[-1] < end:
        points.append(max(closed_at, end))
    gaps = []
    previous = None
    for point in points:
        if previous is not None and point > start and previous < end:
            gaps.append(point - previous)
        previous = point
    if points and points[0] > start:  # nothing succeeded before the window: it opens the gap
        gaps.insert(0, points[0] - start)
    return gaps


def window_figures(records: Sequence[Sequence[Any]], start: float, end: float, normal_gap: float,
                   closed_at: float) -> dict[str, Any]:
    """Downtime, failures, longest gap, rate and latency of the requests around ``[start, end]``."""
    done = sorted(record[1] for record in records if record[2])
    gaps = gaps_over(done, start, end, closed_at)
    inside = [record for record in records if record[2] and start <= record[1] <= end]
    latencies = sorted(record[1] - record[0] for record in inside)
    failed = [record for record in records if not record[2] and record[0] <= end and record[1] >= start]
    return {
        "downtime_s": sum(max(0.0, gap - normal_gap) for gap in gaps),
        "failed_requests": len(failed),
        "errors": sorted({record[3] for record in failed}),
        "longest_gap_s": max(gaps, default=0.0),
        "window_s": end - start,
        "requests_ok": len(inside),
        "rate": len(inside) / (end - start) if end > start else 0.0,
        "latency_p50_s": statistics.median(latencies) if latencies else None,
        "latency_p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None,
    }


def normal_gap(records: Sequence[Sequence[Any]], start: float, end: float) -> float:
    """The longest gap between two successive successes both inside ``[start, end]``."""
    done = sorted(record[1] for record in records if record[2] and start <= record[1] <= end)
    return max((later - earlier for earlier, later in zip(done, done[1:])), default=0.0)


# --- the orchestrator and validator (this process) -----------------------------------------------


class Child:
    """A child process spoken to in lines: commands on stdin, one JSON line per answer."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True,
                                        env=env)

    async def answer(self, command: str | None = None) -> Any:
        if command is not None:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        line = await asyncio.get_running_loop().run_in_executor(None, self.process.stdout.readline)
        if not line:
            raise RuntimeError(f"the {self.process.args[5]} process ended (exit {self.process.wait()})")
        return json.loads(line)

    async def close(self) -> Any:
        """Close stdin (the child's end) and return its last line, if any."""
        self.process.stdin.close()
        line = await asyncio.get_running_loop().run_in_executor(None, self.process.stdout.read)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        lines = [text for text in line.splitlines() if text.strip()]
        return json.loads(lines[-1]) if lines else None

    def stop(self) -> None:
        from bench.children import end

        end(self.process)


def proof_figures(prefix: str, results: list, seconds: float) -> dict[str, Any]:
    if not results:
        return {f"{prefix}_proof_ok": False, f"{prefix}_proof_reason": "no_inventory", f"{prefix}_proof_s": seconds}
    [result] = results
    return {
        f"{prefix}_proof_ok": bool(result.ok and (result.serving if prefix == "serving" else True)),
        f"{prefix}_proof_reason": result.reason if result.ok else f"{result.reason}: {result.detail}"[:300],
        f"{prefix}_proof_serving": result.serving,
        f"{prefix}_proof_s": seconds,
        f"{prefix}_fill_s": result.fill_s,
        f"{prefix}_access_s": result.access_s,
        f"{prefix}_proven_mib": result.proven_bytes / MIB,
        f"{prefix}_proven_fraction": result.proven_fraction,
        f"{prefix}_multiplier": result.multiplier,
    }


def slowdowns(args: argparse.Namespace, row: Any, memory: int, serving: list, whole: list, slack: float) -> dict:
    """How much slower the serving proof ran per multiply-accumulate than the whole-device proof
    on the idle device (instance stopped), phase by phase: what ``serving_slack`` must cover."""
    from protocol.graval.spec import plan

    if not (serving and whole and serving[0].ok and whole[0].ok and serving[0].serving):
        return {"serving_fill_slowdown": None, "serving_access_slowdown": None, "serving_slack": slack}
    steps = row.graval_steps_per_matrix
    beside = plan("bench", memory - int(args.reserved_share * memory), n=args.n, b=args.b, steps_per_matrix=steps)
    full = plan("bench", memory, n=args.n, b=args.b, steps_per_matrix=steps)
    (mine,), (idle,) = serving, whole
    return {
        "serving_fill_slowdown": (mine.fill_s / beside.fill_macs) / (idle.fill_s / full.fill_macs),
        "serving_access_slowdown": (mine.access_s / beside.access_macs) / (idle.access_s / full.access_macs),
        "serving_slack": slack,
    }


async def measure(args: argparse.Namespace, wallet_path: str) -> dict[str, Any]:
    from loguru import logger

    from protocol.dendrite import Dendrite, Target
    from protocol.graval.devices import load_gpu_table
    from protocol.graval.synapses import Inventory
    from validator.graval.session import GravalVerifier

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    run_started = time.monotonic()
    validator, _, _ = bench_wallets(wallet_path)
    row = next(model for model in load_gpu_table() if model.id == "cpu")
    row = row.model_copy(update={"graval_n": args.n, "graval_b": args.b, "memory_gb_min": 1 / 1024})
    script = [sys.executable, __file__, "--wallets", wallet_path]
    threads = {name: str(args.prover_threads) for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    miner_child = Child(script + ["--role", "miner", "--memory-mb", str(args.memory_mb), "--reserved-share",
                                  str(args.reserved_share), "--wiring", args.wiring, "--echo-ref", args.echo_ref,
                                  "--prover-threads", str(args.prover_threads)],
                        env=dict(os.environ, **threads) if args.prover_threads else None)
    load_child: Child | None = None
    marks: dict[str, float] = {}
    cpu: dict[str, float | None] = {}
    try:
        miner = await miner_child.answer()
        if miner["ready"] != "ready":
            raise RuntimeError(f"the echo instance did not start: {miner['error']}")
        load_child = Child(script + ["--role", "load", "--miner", json.dumps(miner), "--clients", str(args.clients),
                                     "--direct-clients", str(args.direct_clients), "--rate", str(args.rate),
                                     "--request-timeout", str(args.request_timeout)])
        await load_child.answer()
        if args.validator_nice:
            os.nice(args.validator_nice)  # the validator stands for another machine: it yields the cores
        target = Target(miner["hotkey"], miner["axon"])

        def mark(name: str) -> None:
            marks[name] = time.monotonic()
            cpu[f"instance_{name}"] = cpu_seconds(miner["pid"])
            cpu[f"miner_{name}"] = cpu_seconds(miner_child.process.pid)

        async with Dendrite(validator) as dendrite:
            verifier = GravalVerifier(dendrite, [row], allow_cpu=True)
            inventory = await dendrite.call(target, Inventory(), timeout=15)
            loads = {load.uuid: load.reserved_bytes for load in inventory.response.loads} if inventory.ok else {}
            await asyncio.sleep(args.warm_s)
            mark("before")
            await asyncio.sleep(args.before_s)
            mark("proof")
            serving = await verifier.verify_miner(target)
            mark("proof_end")
            await asyncio.sleep(args.after_s)
            mark("control")  # as long as the proof window, with no proof: the box's own noise
            await asyncio.sleep(max(1.0, marks["proof_end"] - marks["proof"]))
            mark("control_end")
            await asyncio.sleep(args.after_s)  # successes after the control window close its last gap
            await load_child.answer("direct-off")  # the restarted instance listens on another port

            mark("stop")
            await miner_child.answer("stop")
            mark("stopped")
            whole = await verifier.verify_miner(target)
            mark("whole_end")
            restarted = await miner_child.answer("start")
            mark("ready")
            if restarted["ready"] != "ready":
                raise RuntimeError(f"the echo instance did not restart: {restarted['error']}")
            await asyncio.sleep(args.after_s)
        records = await load_child.close()
        load_child = None
    finally:
        for child in (load_child, miner_child):  # EOF on stdin ends each (the load is None once read)
            if child is not None:
                child.stop()
    if args.trace:
        Path(args.trace).write_text(json.dumps({"marks": marks, "records": records}))

    def figures(path: str) -> dict[str, Any]:
        mine = [record for record in records if record[4] == path]
        closed_at = max((record[1] for record in mine), default=marks["ready"])
        normal = normal_gap(mine, marks["before"], marks["proof"])
        outage = max(normal, args.outage_gap_s)  # shorter gaps are latency (reported), not downtime
        windows = {"before": ("before", "proof"), "during": ("proof", "proof_end"),
                   "control": ("control", "control_end"), "baseline": ("stop", "ready")}
        return {"normal": normal, **{name: window_figures(mine, marks[start], marks[end], outage, closed_at)
                                     for name, (start, end) in windows.items()}}

    by_miner = figures("miner")
    normal, before, during, control, baseline = (by_miner[name] for name in ("normal", "before", "during", "control", "baseline"))

    def share(who: str, start: str, end: str) -> float | None:
        first, last = cpu.get(f"{who}_{start}"), cpu.get(f"{who}_{end}")
        return None if first is None or last is None else (last - first) / (marks[end] - marks[start])

    results: dict[str, Any] = {
        "wiring": args.wiring, "device_mib": args.memory_mb, "reserved_share": args.reserved_share,
        "graval_n": args.n, "clients": args.clients, "offered_rate": args.rate, "cores": os.cpu_count(),
        "prover_threads": args.prover_threads or os.cpu_count(),
        "inventory_reports_load": miner["uuid"] in loads,
        "inventory_reserved_mib": loads.get(miner["uuid"], 0) / MIB,
    }
    results.update(proof_figures("serving", serving, marks["proof_end"] - marks["proof"]))
    results.update({
        "normal_gap_s": normal,
        "serving_downtime_s": during["downtime_s"],
        "serving_failed_requests": during["failed_requests"],
        "serving_errors": during["errors"],
        "serving_longest_gap_s": during["longest_gap_s"],
        "before_rate": before["rate"],
        "serving_rate": during["rate"],
        # a refused proof's window is a few ms: no rate to compare
        "serving_rate_ratio": during["rate"] / before["rate"] if before["rate"] and during["window_s"] >= 1 else None,
        "before_latency_p50_s": before["latency_p50_s"], "serving_latency_p50_s": during["latency_p50_s"],
        "before_latency_p99_s": before["latency_p99_s"], "serving_latency_p99_s": during["latency_p99_s"],
        "before_failed_requests": before["failed_requests"],
        "control_downtime_s": control["downtime_s"],
        "control_longest_gap_s": control["longest_gap_s"],
        "control_failed_requests": control["failed_requests"],
    })
    if args.direct_clients:
        direct = figures("direct")
        results.update({
            "direct_normal_gap_s": direct["normal"],
            "direct_downtime_s": direct["during"]["downtime_s"],
            "direct_longest_gap_s": direct["during"]["longest_gap_s"],
            "direct_failed_requests": direct["during"]["failed_requests"],
            "direct_latency_p99_s": direct["during"]["latency_p99_s"],
            "direct_control_downtime_s": direct["control"]["downtime_s"],
            "direct_control_longest_gap_s": direct["control"]["longest_gap_s"],
        })
    results.update({
        "instance_cpu_share_before": share("instance", "before", "proof"),
        "instance_cpu_share_during": share("instance", "proof", "proof_end"),
        "miner_cpu_share_before": share("miner", "before", "proof"),
        "miner_cpu_share_during": share("miner", "proof", "proof_end"),
    })
    results.update(proof_figures("baseline", whole, marks["whole_end"] - marks["stopped"]))
    results.update(slowdowns(args, row, miner["memory_bytes"], serving, whole, verifier.serving_slack))
    results.update({
        "baseline_downtime_s": baseline["downtime_s"],
        "baseline_failed_requests": baseline["failed_requests"],
        "baseline_longest_gap_s": baseline["longest_gap_s"],
        "baseline_stop_s": marks["stopped"] - marks["stop"],
        "baseline_restart_s": restarted["cold_start_s"],
        "baseline_window_s": marks["ready"] - marks["stop"],
        "requests": len(records),
        "run_s": time.monotonic() - run_started,
    })
    return results


def main(argv: Sequence[str] | None = None) -> None:
    import uvloop

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second offered by all clients together")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients through the miner's axon")
    parser.add_argument("--direct-clients", type=int, default=1,
                        help="clients calling the instance straight, at the same pace each (informational)")
    parser.add_argument("--prover-threads", type=int, default=0,
                        help="cap the miner's prover threads (BLAS and element-wise); 0: as a miner runs, every core")
    parser.add_argument("--validator-nice", type=int, default=10, help="niceness of this process (the validator)")
    parser.add_argument("--request-timeout", type=float, default=5.0, help="seconds one request may take")
    parser.add_argument("--memory-mb", type=int, default=32, help="the CPU pseudo-device's memory (MiB)")
    parser.add_argument("--reserved-share", type=float, default=0.75, help="share of the device the instance holds")
    parser.add_argument("--n", type=int, default=512, help="GraVal matrix size for the cpu row (power of two)")
    parser.add_argument("--b", type=int, default=8, help="GraVal state width for the cpu row")
    parser.add_argument("--warm-s", type=float, default=2.0, help="load before measuring")
    parser.add_argument("--before-s", type=float, default=12.0, help="the before window")
    parser.add_argument("--after-s", type=float, default=3.0, help="load after each proof")
    parser.add_argument("--outage-gap-s", type=float, default=1.0,
                        help="a gap between successes longer than this (and than the normal gap) is downtime; "
                             "shorter ones are latency, reported as the longest gap and p99")
    parser.add_argument("--wiring", choices=("neuron", "graval-inventory"), default="neuron",
                        help="neuron: as neurons/miner.py attaches the services; graval-inventory: GravalService's "
                             "Inventory (with the loads) attached last")
    parser.add_argument("--echo-ref", default=ECHO_REF, help="the chute the instance runs")
    parser.add_argument("--trace", help="write the marks and every request record (JSON) to this file")
    parser.add_argument("--role", choices=("miner", "load"), help=argparse.SUPPRESS)
    parser.add_argument("--wallets", help=argparse.SUPPRESS)
    parser.add_argument("--miner", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 < args.reserved_share < 1:
        parser.error("--reserved-share must be between 0 and 1")
    if args.role == "miner":
        uvloop.run(serve_miner(args))
        return
    if args.role == "load":
        uvloop.run(generate_load(args))
        return

    import gc

    from bench.report import print_last_line, print_table

    with tempfile.TemporaryDirectory(prefix="canopy-bench-graval-serving-") as wallet_path:
        bench_wallets(wallet_path)
        gc.freeze()
        results = uvloop.run(measure(args, wallet_path))
    met = {
        "serving_downtime_s": results["serving_downtime_s"] <= TARGETS["serving_downtime_s"],
        "serving_failed_requests": results["serving_failed_requests"] <= TARGETS["serving_failed_requests"],
        "serving_proof_ok": results["serving_proof_ok"] is TARGETS["serving_proof_ok"],
    }
    results["targets"] = TARGETS
    results["meets_targets"] = all(met.values())
    checks = {"serving_downtime_s": ("== 0", met["serving_downtime_s"]),
              "serving_failed_requests": ("== 0", met["serving_failed_requests"]),
              "serving_proof_ok": ("true (ok, serving)", met["serving_proof_ok"])}
    print_table(f"GraVal beside serving ({results['device_mib']} MiB CPU pseudo-device, "
                f"{results['reserved_share']:g} held by the instance, wiring {results['wiring']})", results, checks, digits=4)
    print_last_line(results, digits=4)


if __name__ == "__main__":
    main()
