"""Benchmark of the validator: one full step against 256 simulated miners, and the CPU of re-verification.

Run from the repo root: ``.venv/bin/python bench/validator.py [--miners 256] [--devices 8] [--steps 3]``
(``./run.sh bench validator``). Callers: developers and CI. Three processes take part:

- **the simulated miners** (this script re-run with ``--role sim``): ONE aiohttp server on
  127.0.0.1 answers for every miner, telling them apart by the btauth receiver header (no
  signature check). Each miner offers ``--devices`` CPU pseudo-devices of 16 MiB
  (``miner.inventory.cpu_device``, uuids derived from the hotkey) and hosts one JSON
  chute (one POST cord with pydantic input and output schemas, one ready instance). It
  answers ``Inventory``, ``DeviceInfo`` (live readings that match the claims), ``Prove``
  (a REAL honest ``Prover`` on numpy for the spec received, in a pool of
  ``--sim-workers`` processes; the prover stays in its worker until ``Open``), ``Open``
  and ``Invoke`` (one NDJSON chunk: status 200, a body valid against the output schema,
  ``compute_s`` 0.05). ``GET /stats`` counts the requests per synapse.
- **the store prefill** (``--role prefill``): a temporary SQLite store filled like a validator
  that has run a week at the default schedule: 7 days of synthetic invocations (every miner
  probed every ``--validator.synthetic_interval_s`` = 300 s: miners x 2016 rows, 1% failed),
  ``--organic-per-miner-hour`` organic rows per miner and hour (the API's), an hourly
  GraVal history of every device over ``--verification-history-hours`` (default the whole
  week; the latest within the last hour, at spread times), the miners and the current
  scores. Bulk inserts through the store's engine, in time order (as a validator appends).
  The score history is not prefilled (no step reads it; a week of it is ~13M rows).
- **the validator** (this process, measured alone: its CPU and RSS are not the miners'):
  a devnet chain in the temp dir (the miners registered and served at the simulator's
  address, the validator with stake above the threshold), ``Validator.restore()`` from
  the store, then steps with ``wait=True`` (the GraVal and synthetic rounds it starts are
  awaited before scoring).

Figures:

- ``restart_step_s``: the first step after ``restore()`` (not in the median): metagraph
  sync, live device-info checks of every miner (none is scheduled yet after a restart),
  the GraVal rounds due, a synthetic round, scoring, weights. Before it, the restored
  schedule is pinned to the steady state below: a restore draws a fresh random delay per
  miner, so ~1/8 of the miners verified in the last hour are due at once
  (``due_after_restore``); their proofs would take the simulator minutes.
- ``step_s``: median wall time of ``await validator.step(wait=True)`` over ``--steps`` steps.
  Before each, exactly the steady-state work is made due: ceil(miners x step_s / reverify_s)
  miners' GraVal rounds (= 1 with the defaults; in the first step they are due from the
  store: their last verification is older than 1.5 x reverify_s), ceil(miners x step_s /
  device_info_interval_s) device-info checks (11), and a synthetic round to every miner
  (``next_synthetic_at = 0``). Every periodic part happens in the measured step: the
  metagraph sync is forced and so is a weights submission (devnet: a SQLite write; a real
  chain adds the extrinsic's inclusion time). ``step_cpu_s``: the validator process's CPU
  (all its threads) in the step; ``step_cpu_share_of_core`` = that / ``--validator.step_s``
  (what a step every 12 s would cost, an upper bound: not every step syncs, sets weights
  or probes). The parts, from pass-through timers put around the
  instance's methods and ``validator.rounds`` (no code is changed): ``sync_s``,
  ``inventory_s`` (fan-out + miners upsert), ``rounds_s`` (waiting for the rounds),
  ``verify_round_s`` (the longest GraVal round; the simulator proves at n = 1024 on this
  machine's CPUs, which the validator shares), ``synthetic_round_s``, ``score_s`` (of which
  ``activity_since_s`` and ``latest_verifications_s``: the store's aggregates over the
  window), ``weights_s``. ``verifications_in_step`` (devices), ``synthetic_calls_in_step``
  and ``info_checks_in_step`` count the rows and requests of the step; the run exits non-zero
  when a verification or a synthetic call of an honest simulated miner fails. ``prune_s``:
  ``store.prune`` once after the steps (every 100th step runs it).
- ``inventory_fanout_s``: the BASELINE, a bare ``dendrite.query(miners, Inventory())`` to every
  miner (median, measured between the steps); ``step_over_fanout = step_s / inventory_fanout_s``.
- ``verify_cpu_s_per_hour``: the validator's CPU for re-verification at the default schedule
  = ``verify_cpu_s_per_device`` x ``devices_reverified_per_hour`` (miners x devices x 3600 /
  reverify_s); ``verify_share_of_core`` = that / 3600 is the ratio to one core.
  ``verify_cpu_s_per_device`` is measured in a fresh process (``--role verify-cost``) with
  ``time.thread_time`` around everything the validator does for one device once its proof
  is back (all in one thread): ``pick_samples``, parsing the ``Commitment``, ``leaves_for``,
  building the ``Open`` request, ``Openings.model_validate_json`` of the wire bytes and
  ``verify``, with the re-verification sample count ``samples_needed(failure=1e-3)`` = 205
  per phase; median of ``--verify-repeats`` (``*_min``: the fastest, what a quiet core gives;
  ``verify_loadavg_1m``: the machine's load meanwhile). It is measured directly at PRODUCTION shape:
  the h100 row's n = 16384 (b = 256) with the m and steps an 80 GB H100 gets
  (``prod_m``, ``prod_steps``). The cost is not independent of m and steps: they decide how
  many opened leaves are distinct (a fill sample of M_0 opens one row instead of two; X
  leaves collide when steps x b is small), how many Merkle paths share nodes, and the
  length of the access-index chain the verifier recomputes; a short chain (m = 2, 4 steps)
  opens ~40% fewer leaves and under-counts the CPU by ~30%. A real proof of that shape takes
  hours on a CPU, so the rounds are EXACT at the samples instead: the samples are drawn
  with a seeded rng before the "commitment" is built, every opened row/column lies on a
  genuine Merkle path to its root, every sampled entry is the true product of its opened
  inputs (G, X_0 and the noise regenerated from the spec), the rest is random; the verifier
  does exactly an honest round's work and must answer ok. ``check_*``: the method against a
  real honest proof of one shape (``--check-n/m/steps``, default n = 1024, m = 16, 256 steps;
  ``--prod``: n = 16384, m = 2, 4 steps, minutes and ~13 GB), interleaved, same samples
  count; ``check_exact_over_real`` should be ~1. ``verify_cpu_s_at_n*``, ``verify_fit_*``:
  the same at smaller n (production m and steps), fitted as a + b n.
  ``first_verify_cpu_s_per_device``: 410 samples per phase (a device seen for the first
  time), for information. ``openings_wire_mb``: the Openings body the dendrite parses on the
  event loop per device. ``step_verify_cpu_s_per_device``: the ``verify_cpu_s`` the
  validator itself recorded in the measured steps (n = 1024 CPU devices, ``verify`` only).
- ``rss_mb``: the validator process's peak RSS (``ru_maxrss``) after the steps.

Targets: step_s <= 60, verify_cpu_s_per_hour <= 900 (25% of one core). A missed target is
printed, the exit code stays 0. Prints a rich table, then as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Collection, Sequence

# Keep the import path like the other benchmarks: repo root first, bench/ dropped, so the
# packages (validator, miner, protocol) resolve to the tree and not to files in bench/.
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT)] + [entry for entry in sys.path if Path(entry or ".").resolve() not in (HERE, ROOT)]

from pydantic import BaseModel, Field  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn  # noqa: E402

TARGETS = {"step_s": 60.0, "verify_cpu_s_per_hour": 900.0}
MIB = 1 << 20
DEVICE_MEMORY = 16 * MIB  # the smallest CPU pseudo-device the GPU table accepts (n = 1024, 9 matrices)
NETUID = 1
CHUTE_PATH = "/classify"
INVOKE_COMPUTE_S = 0.05
PROGRESS = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def progress(console: Console) -> Progress:
    return Progress(*PROGRESS, console=console, transient=True)


# --- what the simulated miners offer (shared by the simulator and the prefill) ----------------------


class ClassifyIn(BaseModel):
    text: str = Field(..., min_length=1, max_length=64, description="what to classify")
    top_k: int = Field(1, ge=1, le=5)


class ClassifyOut(BaseModel):
    label: str
    score: float = Field(..., ge=0, le=1)


def bench_chute() -> Any:
    """The one JSON chute every simulated miner hosts (the same chute id everywhere)."""
    from canopy.chute import chute_id
    from protocol.chutes import HostedChute, HostedCord

    cord = HostedCord(path=CHUTE_PATH, method="POST", input_schema=ClassifyIn.model_json_schema(),
                      output_schema=ClassifyOut.model_json_schema())
    return HostedChute(chute_id=chute_id("bench", "classify"), name="classify", username="bench", ref="bench:classify",
                       cords=[cord], instances=1, ready_instances=1, concurrency=8)


def miner_devices(hotkey: str, count: int, memory_bytes: int = DEVICE_MEMORY) -> list[Any]:
    """``count`` CPU pseudo-device claims with uuids derived from the hotkey (deterministic)."""
    from miner.inventory import cpu_device

    return [cpu_device(memory_bytes=memory_bytes, salt=f"bench/{hotkey}/{index}").model_copy(update={"index": index})
            for index in range(count)]


# --- the simulated miners (child process: --role sim) ------------------------------------------------

_PROVERS: dict[str, Any] = {}  # in a prover worker: challenge id -> committed Prover, until opened


def _worker_ready() -> int:
    import miner.graval.prover  # noqa: F401 - load numpy and the prover before the first challenge

    return os.getpid()


def _prove_in_worker(spec_json: str) -> str:
    from miner.graval.backends import NumpyBackend
    from miner.graval.prover import Prover
    from protocol.graval.spec import ChallengeSpec

    spec = ChallengeSpec.model_validate_json(spec_json)
    prover = Prover(spec, NumpyBackend())
    commitment = prover.prove()
    _PROVERS[spec.challenge_id] = prover
    return commitment.model_dump_json()


def _open_in_worker(challenge_id: str, refs_json: str) -> str | None:
    from protocol.graval.synapses import Open

    prover = _PROVERS.pop(challenge_id, None)
    if prover is None:
        return None
    try:
        refs = Open.model_validate_json(refs_json).leaves
        return prover.open(list(refs)).model_dump_json()
    finally:
        prover.release()


class ProverPool:
    """Single-process executors, so that ``Open`` reaches the worker that holds the proof."""

    def __init__(self, workers: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        self.executors = [ProcessPoolExecutor(max_workers=1, mp_context=context) for _ in range(workers)]
        self.busy = [0] * workers
        self.owner: dict[str, int] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(executor, _worker_ready) for executor in self.executors))

    async def prove(self, challenge_id: str, spec_json: str) -> str:
        index = min(range(len(self.executors)), key=lambda i: self.busy[i])
        self.busy[index] += 1
        try:
            commitment = await asyncio.get_running_loop().run_in_executor(self.executors[index], _prove_in_worker, spec_json)
        finally:
            self.busy[index] -= 1
        self.owner[challenge_id] = index
        return commitment

    async def open(self, challenge_id: str, body: str) -> str | None:
        index = self.owner.pop(challenge_id, None)
        if index is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(self.executors[index], _open_in_worker, challenge_id, body)

    def close(self) -> None:
        for executor in self.executors:
            executor.shutdown(wait=False, cancel_futures=True)


async def serve_sim(config_path: str) -> None:
    """Serve every miner of the config on one port; print {"port": N}; run until stdin closes."""
    from aiohttp import web
    from bittensor import http_auth

    from protocol import errors
    from protocol.chutes import InvokeChunk
    from protocol.graval.devices import LiveDeviceInfo
    from protocol.graval.synapses import DeviceInfo, DeviceInfoResponse, InventoryResponse, Open, Prove

    config = json.loads(Path(config_path).read_text())
    chute = bench_chute()
    claims = {hotkey: miner_devices(hotkey, config["devices"]) for hotkey in config["hotkeys"]}
    by_uuid = {hotkey: {claim.uuid: claim for claim in devices} for hotkey, devices in claims.items()}
    inventories = {hotkey: InventoryResponse(devices=devices, chutes=[chute]).model_dump_json().encode()
                   for hotkey, devices in claims.items()}
    answer = ClassifyOut(label="positive", score=0.75).model_dump_json()
    invoke_line = InvokeChunk(data=answer, encoding="utf-8", status=200, content_type="application/json", done=True,
                              compute_s=INVOKE_COMPUTE_S).model_dump_json(exclude_none=True).encode() + b"\n"
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"  # one BLAS thread per prover process: the pool is the parallelism
    pool = ProverPool(config["workers"])
    await pool.start()
    counts: dict[str, int] = {}
    receiver_header = http_auth.HEADER_RECEIVER

    def refuse(error: errors.ProtocolError) -> web.Response:
        return web.Response(body=error.to_json(), status=error.status, content_type="application/json")

    def miner_of(request: web.Request) -> str | None:
        counts[request.match_info["name"]] = counts.get(request.match_info["name"], 0) + 1
        hotkey = request.headers.get(receiver_header, "")
        return hotkey if hotkey in claims else None

    def json_response(body: bytes | str) -> web.Response:
        return web.Response(body=body.encode() if isinstance(body, str) else body, content_type="application/json")

    async def synapse(request: web.Request) -> web.StreamResponse:
        hotkey = miner_of(request)
        if hotkey is None:
            return refuse(errors.NotFound("no such miner behind this simulator"))
        name, body = request.match_info["name"], await request.read()
        if name == "Inventory":
            return json_response(inventories[hotkey])
        if name == "DeviceInfo":
            uuids = DeviceInfo.model_validate_json(body).uuids
            if any(uuid not in by_uuid[hotkey] for uuid in uuids):
                return refuse(errors.InvalidPayload("no such device on this miner"))
            now = time.time()
            readings = [LiveDeviceInfo(uuid=uuid, name=by_uuid[hotkey][uuid].name,
                                       memory_total_bytes=by_uuid[hotkey][uuid].memory_bytes,
                                       memory_used_bytes=by_uuid[hotkey][uuid].memory_bytes // 4,
                                       sm_clock_mhz=by_uuid[hotkey][uuid].max_sm_clock_mhz, mem_clock_mhz=0,
                                       utilization_pct=5.0, sampled_at=now) for uuid in uuids]
            return json_response(DeviceInfoResponse(devices=readings).model_dump_json())
        if name == "Prove":
            spec = Prove.model_validate_json(body).spec
            if spec.uuid not in by_uuid[hotkey]:
                return refuse(errors.InvalidPayload(f"no such device on this miner: {spec.uuid}"))
            return json_response(await pool.prove(spec.challenge_id, spec.model_dump_json()))
        if name == "Open":
            challenge_id = Open.model_validate_json(body).challenge_id
            opened = await pool.open(challenge_id, body.decode())
            if opened is None:
                return refuse(errors.NotFound(f"no committed challenge {challenge_id}"))
            return json_response(opened)
        if name == "Invoke":
            return web.Response(body=invoke_line, content_type="application/x-ndjson")
        return refuse(errors.NotFound(f"no such synapse: {name}"))

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counts)

    app = web.Application(client_max_size=64 * MIB)
    app.router.add_post("/synapse/{name}", synapse)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(json.dumps({"port": port}), flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    finally:
        pool.close()
        await runner.cleanup()


# --- the store prefill (child process: --role prefill) ----------------------------------------------


async def prefill(config_path: str) -> None:
    """A week of a validator's rows, in time order; prints the row counts as one JSON line."""
    from validator.graval.session import REVERIFY_FAILURE
    from validator.store import ORGANIC, SYNTHETIC, ValidatorStore
    from validator.tables import DeviceVerification, Invocation
    from protocol.graval.spec import samples_needed

    config = json.loads(Path(config_path).read_text())
    hotkeys: list[str] = config["hotkeys"]
    uids: dict[str, int] = config["uids"]
    now, reverify_s, interval = config["now"], config["reverify_s"], config["synthetic_interval_s"]
    window, organic_rate = config["window_s"], config["organic_per_miner_hour"]
    due = set(config["due"])
    rng = random.Random(7)
    chute = bench_chute()
    cord = chute.cords[0]
    key = f"{chute.chute_id}:{cord.method}:{cord.path}:"
    console = Console(stderr=True)
    store = await ValidatorStore.open(config["database_url"])
    counts = {"synthetic_rows": 0, "organic_rows": 0, "verification_rows": 0}
    invocation_columns = ("miner_hotkey", "chute_id", "source", "ok", "error", "detail", "key", "compute_s",
                          "measured_compute_s", "prompt_tokens", "completion_tokens", "latency_s", "ttft_s",
                          "tokens_per_s", "flagged", "created_at")
    verification_columns = ("miner_hotkey", "uuid", "ok", "reason", "detail", "model_id", "name", "memory_bytes",
                            "elapsed_s", "expected_s", "throughput_macs_s", "samples", "verify_cpu_s", "verified_at")

    async def insert(table: Any, columns: Sequence[str], rows: list[tuple]) -> None:
        """Plain executemany through the store's engine (the ORM's per-row work would triple the time)."""
        if rows:
            sql = f"INSERT INTO {table.__tablename__} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            async with store.engine.begin() as connection:
                await connection.exec_driver_sql(sql, rows)

    start = now - window + 60.0  # every row stays inside the scoring window for the whole run
    rounds = int((now - start) // interval)
    organic_per_round = organic_rate * len(hotkeys) * interval / 3600.0
    chunk: list[tuple] = []
    with progress(console) as bar:
        task = bar.add_task(f"store: a week of invocations ({rounds} synthetic rounds)", total=rounds)
        carry = 0.0
        for index in range(rounds):
            at = start + index * interval
            probe_key = key + f"{index:016x}"
            for hotkey in hotkeys:
                if rng.random() >= 0.01:
                    chunk.append((hotkey, chute.chute_id, SYNTHETIC, True, "", "", probe_key, INVOKE_COMPUTE_S,
                                  INVOKE_COMPUTE_S, 0, 0, rng.uniform(0.03, 0.25), None, None, False, at + rng.uniform(0, 5)))
                else:
                    chunk.append((hotkey, chute.chute_id, SYNTHETIC, False, "timeout", "no complete reply within 60s",
                                  probe_key, 0.0, None, 0, 0, 60.0, None, None, False, at + rng.uniform(0, 5)))
            counts["synthetic_rows"] += len(hotkeys)
            carry += organic_per_round
            organic, carry = int(carry), carry - int(carry)
            for _ in range(organic):
                compute = rng.uniform(0.2, 8.0)
                chunk.append((rng.choice(hotkeys), chute.chute_id, ORGANIC, True, "", "", "", compute, compute,
                              rng.randrange(20, 2000), rng.randrange(1, 800), compute + rng.uniform(0.01, 0.2),
                              rng.uniform(0.05, 0.5), rng.uniform(20, 200), False, at + rng.uniform(0, interval)))
            counts["organic_rows"] += organic
            if len(chunk) >= 20_000:
                await insert(Invocation, invocation_columns, chunk)
                chunk.clear()
            bar.update(task, advance=1)
        await insert(Invocation, invocation_columns, chunk)

        # GraVal: an hourly round per miner over the history; the latest within the last hour
        # (spread), except the miners due in the measured step (older than 1.5 x reverify_s).
        hours = max(1, int(config["verification_history_hours"]))
        first, again = samples_needed(), samples_needed(failure=REVERIFY_FAILURE)
        rows = []
        devices = {hotkey: miner_devices(hotkey, config["devices"]) for hotkey in hotkeys}
        for hotkey in hotkeys:
            last = now - 1.5 * reverify_s - 120.0 if hotkey in due else now - rng.uniform(0, reverify_s)
            for k in range(hours):
                at = last - k * reverify_s + (rng.uniform(-300, 300) if k else 0.0)
                samples = 2 * (first if k == hours - 1 else again)
                for device in devices[hotkey]:
                    rows.append((hotkey, device.uuid, True, "ok", f"{samples} samples", "cpu", device.name,
                                 device.memory_bytes, 6.2, 6.04, 1.95e9, samples, 0.01, at))
        rows.sort(key=lambda row: row[-1])  # ids grow with time, as a validator appends them
        task = bar.add_task(f"store: {hours} h of GraVal results", total=len(rows))
        for offset in range(0, len(rows), 20_000):
            await insert(DeviceVerification, verification_columns, rows[offset:offset + 20_000])
            bar.update(task, advance=min(20_000, len(rows) - offset))
        counts["verification_rows"] = len(rows)

    await store.upsert_miners([dict(hotkey=hotkey, uid=uids[hotkey], coldkey=config["coldkeys"][hotkey],
                                    axon=config["axon"], first_seen_at=now - window, last_seen_at=now - 12.0,
                                    last_reachable_at=now - 12.0, devices_claimed=config["devices"], chutes_hosted=1)
                               for hotkey in hotkeys])
    scores = {hotkey: (1.0 + 0.2 * rng.random()) / len(hotkeys) for hotkey in hotkeys}
    await store.save_scores(config["step"], config["block"], scores, scores, uids, now - 12.0)
    await store.close()
    print(json.dumps(counts), flush=True)


# --- the verifier's CPU per device (child process: --role verify-cost) -------------------------------


class SparseTree:
    """A Merkle tree over ``count`` leaves of which only ``real`` (index -> leaf hash) are known:
    every other subtree is a random node. Its paths are genuine for the real leaves."""

    def __init__(self, count: int, real: dict[int, bytes], rng: random.Random) -> None:
        from protocol.graval.merkle import node_hash

        self.depth = count.bit_length() - 1
        self.nodes = {(0, index): digest for index, digest in real.items()}
        current = set(real)
        for level in range(self.depth):
            parents = set()
            for position in current:
                sibling = (level, position ^ 1)
                if sibling not in self.nodes:
                    self.nodes[sibling] = rng.randbytes(32)
                pair = sorted((position, position ^ 1))
                self.nodes[(level + 1, position >> 1)] = node_hash(self.nodes[(level, pair[0])], self.nodes[(level, pair[1])])
                parents.add(position >> 1)
            current = parents
        self.root = self.nodes[(self.depth, 0)]

    def path(self, index: int) -> list[bytes]:
        return [self.nodes[(level, (index >> level) ^ 1)] for level in range(self.depth)]


def exact_round(spec: Any, count: int, seed: int) -> tuple[list, str, str]:
    """(samples, commitment wire, openings wire) of a round whose samples are known in advance
    (``pick_samples`` with a seeded rng): every opened leaf lies on a genuine Merkle path to
    its root and every sampled entry is the product of its opened inputs, so ``verify``
    does exactly the work of an honest round of this shape and passes; the entries that
    are not sampled are random (nothing computes them: n = 16384 takes a second, not hours)."""
    import numpy as np

    from protocol.graval.field import HALF, P, SBOX, hash_residues
    from protocol.graval.merkle import leaf_hash
    from protocol.graval.spec import access_index
    from protocol.graval.synapses import Commitment, LeafOpening, Openings
    from validator.graval.verifier import leaves_for, pick_samples

    rng, noise_rng = random.Random(seed), np.random.default_rng(seed)
    n, b = spec.n, spec.b
    samples = pick_samples(spec, count, rng)
    keys: dict[str, tuple[int, int]] = {}

    def key(label: str) -> tuple[int, int]:
        if label not in keys:
            keys[label] = spec.key(label)
        return keys[label]

    def generated(label: str, counters: Any) -> Any:
        return hash_residues(np.asarray(counters, dtype=np.int64), key(label))

    def entry(left: Any, right: Any, labels: tuple[str, str], row: int, col: int) -> int:
        noise = int(generated(labels[0], [row])[0]) + int(generated(labels[1], [col])[0])
        value = int(SBOX[(int(np.dot(left.astype(np.int64), right.astype(np.int64))) % P + noise) % P])
        return value - P if value > HALF else value

    content: dict[tuple[str, int, int], Any] = {}  # ("M", i, row) / ("X", t, col) -> centred int8 entries

    def leaf(kind: str, index: int, position: int) -> Any:
        if (kind, index, position) not in content:
            content[(kind, index, position)] = noise_rng.integers(-HALF, HALF + 1, size=n, dtype=np.int8)
        return content[(kind, index, position)]

    for sample in sorted((s for s in samples if s.kind == "fill"), key=lambda s: s.index):
        i, r, c = sample.index, sample.row, sample.col
        left = leaf("M", i - 1, r) if i > 0 else generated("G", r * n + np.arange(n))
        leaf("M", i, r)[c] = entry(left, generated("G", np.arange(n) * n + c), (f"u{i}", f"v{i}"), r, c)
    by_step: dict[int, list] = {}
    opened_x: dict[int, set[int]] = {}
    for sample in samples:
        if sample.kind == "access":
            by_step.setdefault(sample.index, []).append(sample)
            opened_x.setdefault(sample.index, set()).add(sample.col)
            if sample.index > 1:
                opened_x.setdefault(sample.index - 1, set()).add(sample.col)
    state_roots, previous = [], b""
    for t in range(1, spec.steps + 1):
        j = access_index(spec, t, previous)
        for sample in by_step.get(t, ()):
            r, c = sample.row, sample.col
            right = leaf("X", t - 1, c) if t > 1 else generated("x0", np.arange(n) * b + c)
            leaf("X", t, c)[r] = entry(leaf("M", j, r), right, (f"au{t}", f"av{t}"), r, c)
        if t in opened_x:
            tree = SparseTree(b, {col: leaf_hash(leaf("X", t, col).tobytes()) for col in opened_x[t]}, rng)
            content.update({("Xtree", t, 0): tree})
            previous = tree.root
        else:
            previous = rng.randbytes(32)
        state_roots.append(previous.hex())
    rows_of: dict[int, dict[int, bytes]] = {}
    for (kind, index, position), data in list(content.items()):
        if kind == "M":
            rows_of.setdefault(index, {})[position] = leaf_hash(data.tobytes())
    matrix_trees = {index: SparseTree(n, rows, rng) for index, rows in rows_of.items()}
    commitment = Commitment(challenge_id=spec.challenge_id, state_roots=state_roots,
                            matrix_roots=[(matrix_trees[i].root if i in matrix_trees else rng.randbytes(32)).hex()
                                          for i in range(spec.m)])
    openings = []
    for ref in leaves_for(spec, commitment, samples):
        if ref.kind == "M":
            data, path = content[("M", ref.index, ref.leaf)], matrix_trees[ref.index].path(ref.leaf)
        else:
            data, path = content[("X", ref.index, ref.leaf)], content[("Xtree", ref.index, 0)].path(ref.leaf)
        openings.append(LeafOpening.build(ref, data.tobytes(), path))
    wire = Openings(challenge_id=spec.challenge_id, leaves=openings).model_dump_json()
    return samples, commitment.model_dump_json(), wire


def validator_cpu(spec: Any, count: int, samples: list, commitment_wire: str, wire: str) -> tuple[float, int]:
    """Thread CPU of what the validator does for one device once the proof is back: pick the
    samples, parse the commitment, pick the leaves, build the Open request, parse the
    openings, verify. Returns (seconds, leaves opened); raises if the verdict is not ok."""
    from protocol.graval.synapses import Commitment, Open, Openings
    from validator.graval.verifier import leaves_for, pick_samples, verify

    time.sleep(0.02)
    tick = time.thread_time()
    pick_samples(spec, count)  # its cost (a SystemRandom, as in the validator); the planned samples are used
    commitment = Commitment.model_validate_json(commitment_wire)
    refs = leaves_for(spec, commitment, samples)
    Open(challenge_id=spec.challenge_id, leaves=refs).to_json()
    verdict = verify(spec, commitment, samples, Openings.model_validate_json(wire))
    cpu = time.thread_time() - tick
    if not verdict.ok:
        raise SystemExit(f"validator bench: the verifier rejected an honest round at n={spec.n}, m={spec.m}, "
                         f"steps={spec.steps}: {verdict.reason}: {verdict.detail}")
    return cpu, len(refs)


def real_round(spec: Any, prover: Any, count: int) -> tuple[list, str, str]:
    """The same from a real proof: samples picked after the commitment, opened by the prover."""
    from validator.graval.verifier import leaves_for, pick_samples

    commitment = prover.commitment
    samples = pick_samples(spec, count)
    wire = prover.open(leaves_for(spec, commitment, samples)).model_dump_json()
    return samples, commitment.model_dump_json(), wire


def verify_cost(config_path: str) -> None:
    """The validator's thread CPU per device challenge; prints one JSON line."""
    from miner.graval.backends import pick_backend
    from miner.graval.prover import Prover
    from protocol.graval.spec import ChallengeSpec

    config = json.loads(Path(config_path).read_text())
    console = Console(stderr=True)
    repeats, m, steps = config["repeats"], config["prod_m"], config["prod_steps"]
    out: dict[str, Any] = {"points": []}
    uuid = "GPU-00000000-bench-validator"

    def measure_exact(spec: Any, count: int, seeds: Sequence[int]) -> tuple[float, float, int, float]:
        runs, size = [], 0
        for seed in seeds:
            samples, commitment_wire, wire = exact_round(spec, count, seed)
            runs.append(validator_cpu(spec, count, samples, commitment_wire, wire))
            size = len(wire)
        cpu = [seconds for seconds, _ in runs]
        return statistics.median(cpu), min(cpu), runs[-1][1], size / MIB

    with progress(console) as bar:
        points = [(n, label, count) for n in config["ns"] for label, count in config["samples"].items()
                  if label == "reverify" or n == config["prod_n"]]
        task = bar.add_task("verifier CPU per device (exact rounds, production m and steps)", total=len(points) * repeats)
        for n, label, count in points:
            spec = ChallengeSpec.fresh(uuid, n=n, b=max(8, n // 64), m=m, steps=steps)
            seeds = [bar.update(task, advance=1) or 1000 * n + k for k in range(repeats)]
            cpu, fastest, leaves, size = measure_exact(spec, count, seeds)
            entry = next((p for p in out["points"] if p["n"] == n), None)
            if entry is None:
                entry = {"n": n}
                out["points"].append(entry)
            entry.update({f"{label}_cpu_s": cpu, f"{label}_cpu_s_min": fastest, f"{label}_leaves": leaves,
                          f"{label}_wire_mb": size})

    # Cross-check of the method: a real honest proof and exact rounds of the same shape.
    check = config["check"]
    spec = ChallengeSpec.fresh(uuid, n=check["n"], b=max(8, check["n"] // 64), m=check["m"], steps=check["steps"])
    backend = pick_backend(config["backend"])
    with progress(console) as bar:
        task = bar.add_task(f"cross-check: real proof n={spec.n} m={spec.m} steps={spec.steps} on {backend.name}",
                            total=spec.m + spec.steps)
        prover = Prover(spec, backend, progress=lambda phase, done, total: bar.update(
            task, completed=done if phase == "fill" else spec.m + done))
        prover.commitment = prover.prove()
    count = config["samples"]["reverify"]
    real, exact = [], []
    for k in range(3 * repeats):  # interleaved, so both see the same machine (cheap at the check's size)
        real.append(validator_cpu(spec, count, *real_round(spec, prover, count)))
        exact.append(validator_cpu(spec, count, *exact_round(spec, count, 7 + k)))
    prover.release()
    out["check"] = {"n": spec.n, "m": spec.m, "steps": spec.steps, "backend": backend.name,
                    "real_cpu_s": statistics.median(cpu for cpu, _ in real), "real_leaves": real[-1][1],
                    "exact_cpu_s": statistics.median(cpu for cpu, _ in exact), "exact_leaves": exact[-1][1]}
    print(json.dumps(out), flush=True)


# --- the validator (this process) ---------------------------------------------------------------------


class Timers:
    """Pass-through timers around coroutine functions: total, longest and count per name."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}
        self.longest: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def reset(self) -> None:
        self.total.clear()
        self.longest.clear()
        self.calls.clear()

    def wrap(self, name: str, function: Any) -> Any:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                self.total[name] = self.total.get(name, 0.0) + spent
                self.longest[name] = max(self.longest.get(name, 0.0), spent)
                self.calls[name] = self.calls.get(name, 0) + 1

        return timed


def child(role: str, config_path: Path, **popen: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--role", role, "--config", str(config_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True, **popen)


def run_child(role: str, config_path: Path, env: dict[str, str] | None = None) -> dict:
    """Run a child role to the end; its last stdout line is a JSON object."""
    process = child(role, config_path, env=env)
    output, _ = process.communicate()
    lines = [line for line in output.splitlines() if line.strip()]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"the {role} process failed (exit {process.returncode}): {output[-2000:]}")
    return json.loads(lines[-1])


def write_config(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config))
    return path


async def sim_stats(session: Any, url: str) -> dict[str, int]:
    async with session.get(url + "/stats") as response:
        return await response.json()


def steady_share(miners: int, step_s: float, interval_s: float) -> int:
    """Miners due per step when each is visited once per ``interval_s`` on average."""
    return min(miners, math.ceil(miners * step_s / interval_s))


def spread(hotkeys: list[str], count: int, skip: Collection[str] = ()) -> list[str]:
    """``count`` hotkeys spread evenly over the sorted list, leaving out ``skip``."""
    pool = [hotkey for hotkey in hotkeys if hotkey not in skip]
    return [pool[i * len(pool) // count] for i in range(count)] if count else []


async def measure(args: argparse.Namespace, workdir: Path, console: Console) -> dict:
    import aiohttp
    from bittensor.sp_core import Keypair
    from sqlalchemy import func, select

    from canopy.config import load_settings
    from canopy.wallets import coldkey_ss58, create_devnet_wallet
    from chain.devnet import DevnetChain, DevnetLedger
    from protocol.dendrite import Dendrite
    from protocol.graval.devices import load_gpu_table
    from protocol.graval.synapses import Inventory
    from validator import rounds
    from validator.loop import Validator
    from validator.store import SYNTHETIC, ValidatorStore
    from validator.tables import DeviceVerification, Invocation

    database = workdir / "validator.sqlite"
    url = f"sqlite+aiosqlite:///{database}"
    settings = load_settings(["--network", "devnet", "--netuid", str(NETUID), "--devnet.path", str(workdir / "devnet.sqlite"),
                              "--wallet.path", str(workdir / "wallets"), "--graval.allow_cpu", "--wandb.mode", "disabled",
                              "--database_url", url])
    step_s, reverify_s = settings.validator.step_s, settings.graval.reverify_s
    results: dict[str, Any] = {"miners": args.miners, "devices_per_miner": args.devices, "steps": args.steps,
                               "step_interval_s": step_s, "reverify_s": reverify_s,
                               "synthetic_interval_s": settings.validator.synthetic_interval_s}

    # The chain: the miners registered and (below) served at the simulator's address.
    started = time.perf_counter()
    ledger = DevnetLedger(workdir / "devnet.sqlite", block_time=args.block_time)
    ledger.create_subnet(NETUID, tempo=360, weights_rate_limit=0, max_allowed_uids=max(256, args.miners + 1))
    wallet = create_devnet_wallet("bench", "validator", workdir / "wallets")
    ledger.register(NETUID, wallet.hotkey.ss58_address, coldkey_ss58(wallet))
    ledger.add_stake(NETUID, wallet.hotkey.ss58_address, 1000.0)
    hotkeys, coldkeys = [], {}
    with progress(console) as bar:
        task = bar.add_task("chain: registering the miners", total=args.miners)
        for index in range(args.miners):
            hotkey = Keypair.create_from_uri(f"//canopy-bench-miner-{index}").ss58_address
            coldkeys[hotkey] = Keypair.create_from_uri(f"//canopy-bench-cold-{index}").ss58_address
            ledger.register(NETUID, hotkey, coldkeys[hotkey])
            hotkeys.append(hotkey)
            bar.update(task, advance=1)
    hotkeys.sort()
    graph = ledger.metagraph(NETUID)
    uids = {hotkey: graph.by_hotkey(hotkey).uid for hotkey in hotkeys}

    sim = child("sim", write_config(workdir / "sim.json", {"hotkeys": hotkeys, "devices": args.devices,
                                                            "workers": args.sim_workers}), stdin=subprocess.PIPE)
    try:
        line = sim.stdout.readline()
        if not line:
            raise RuntimeError(f"the simulated miners failed to start (exit {sim.wait()})")
        port = json.loads(line)["port"]
        sim_url = f"http://127.0.0.1:{port}"
        for hotkey in hotkeys:
            ledger.serve_axon(NETUID, hotkey, "127.0.0.1", port)
        results["setup_s"] = time.perf_counter() - started

        # The store, as a week of running at the default schedule left it.
        due = spread(hotkeys, steady_share(args.miners, step_s, reverify_s))
        info = spread(hotkeys, steady_share(args.miners, step_s, settings.validator.device_info_interval_s), set(due))
        started = time.perf_counter()
        console.print(f"store: prefilling {database.name} (a week of rows; ~{args.miners * 2016 * (1 + args.organic_per_miner_hour / 12):,.0f} invocations)")
        counts = run_child("prefill", write_config(workdir / "prefill.json", {
            "database_url": url, "hotkeys": hotkeys, "uids": uids, "coldkeys": coldkeys, "devices": args.devices,
            "now": time.time(), "reverify_s": reverify_s, "synthetic_interval_s": settings.validator.synthetic_interval_s,
            "window_s": settings.scoring.window_s, "organic_per_miner_hour": args.organic_per_miner_hour, "due": due,
            "verification_history_hours": args.verification_history_hours, "axon": sim_url, "step": 10_001,
            "block": ledger.block()}))
        results["prefill_s"] = time.perf_counter() - started
        results.update(counts)
        results["database_mb"] = sum(path.stat().st_size for path in workdir.glob("validator.sqlite*")) / MIB

        store = await ValidatorStore.open(url)
        timers = Timers()
        async with Dendrite(wallet) as dendrite, aiohttp.ClientSession() as http:
            validator = Validator(wallet=wallet, chain=DevnetChain(ledger.path, ledger=ledger), settings=settings,
                                  store=store, dendrite=dendrite, table=load_gpu_table(), rng=random.Random(11))
            started = time.perf_counter()
            await validator.restore()
            results["restore_s"] = time.perf_counter() - started
            now = time.time()
            results["due_after_restore"] = len(validator.schedule.due(hotkeys, now))
            for hotkey in hotkeys:  # pin the steady state: only the chosen miners are due
                if hotkey not in due:
                    validator.schedule.record(hotkey, True, now)
            if sorted(validator.schedule.due(hotkeys, now)) != sorted(due):
                raise RuntimeError("the restored schedule does not have the prefilled miners due")

            # Pass-through timers (no behaviour changes): the step's parts.
            for name in ("sync", "inventory", "settle", "score"):
                setattr(validator, name, timers.wrap(name, getattr(validator, name)))
            validator.weights.maybe_set = timers.wrap("weights", validator.weights.maybe_set)
            store.activity_since = timers.wrap("activity_since", store.activity_since)
            store.latest_verifications = timers.wrap("latest_verifications", store.latest_verifications)
            rounds.verify_round = timers.wrap("verify_round", rounds.verify_round)
            rounds.synthetic_round = timers.wrap("synthetic_round", rounds.synthetic_round)

            async def failures_since(at: float) -> dict[str, Any]:
                async with store.sessions() as session:
                    verified = (await session.execute(select(DeviceVerification.ok, func.count()).where(
                        DeviceVerification.verified_at >= at).group_by(DeviceVerification.ok))).all()
                    called = (await session.execute(select(Invocation.ok, func.count()).where(
                        Invocation.created_at >= at, Invocation.source == SYNTHETIC).group_by(Invocation.ok))).all()
                    reasons = (await session.execute(select(DeviceVerification.reason, DeviceVerification.detail).where(
                        DeviceVerification.verified_at >= at, DeviceVerification.ok.is_(False)).limit(3))).all()
                    errors = (await session.execute(select(Invocation.error, Invocation.detail).where(
                        Invocation.created_at >= at, Invocation.ok.is_(False)).limit(3))).all()
                v, c = dict(verified), dict(called)
                return {"verified_ok": v.get(True, 0), "verified_failed": v.get(False, 0), "synthetic_ok": c.get(True, 0),
                        "synthetic_failed": c.get(False, 0), "reasons": [tuple(r) for r in reasons],
                        "errors": [tuple(e) for e in errors]}

            def check(outcome: dict[str, Any], what: str) -> None:
                if outcome["verified_failed"] or outcome["synthetic_failed"]:
                    raise RuntimeError(f"{what}: an honest simulated miner failed: {outcome['verified_failed']} device "
                                       f"verification(s) {outcome['reasons']}, {outcome['synthetic_failed']} synthetic "
                                       f"call(s) {outcome['errors']}")

            # The first step after the restart (not in the median).
            console.print(f"validator: restart step ({len(due)} GraVal round(s) due, device-info checks of every miner, "
                          "a synthetic round)")
            at = time.time()
            report = await validator.step(wait=True)
            check(await failures_since(at), "restart step")
            results["restart_step_s"] = report.duration_s
            if report.reachable != args.miners:
                raise RuntimeError(f"only {report.reachable}/{args.miners} simulated miners answered Inventory")

            names = ("step_s", "step_cpu_s", "sync_s", "inventory_s", "rounds_s", "verify_round_s", "synthetic_round_s",
                     "score_s", "activity_since_s", "latest_verifications_s", "weights_s")
            runs: dict[str, list[float]] = {name: [] for name in names}
            fanouts: list[float] = []
            per_step: list[dict[str, Any]] = []
            step_verify_cpu: list[float] = []
            with progress(console) as bar:
                task = bar.add_task(f"validator: {args.steps} measured step(s) + Inventory fan-outs", total=args.steps)
                for index in range(args.steps):
                    for _ in range(args.fanout_repeats):
                        tick = time.perf_counter()
                        answers = await dendrite.query(validator.miners(), Inventory(),
                                                       timeout=settings.validator.inventory_timeout_s)
                        fanouts.append(time.perf_counter() - tick)
                        if not all(answer.ok for answer in answers):
                            raise RuntimeError(f"the Inventory fan-out failed: {next(a.error for a in answers if not a.ok)}")
                    now = time.time()
                    for hotkey in due:
                        validator.schedule.expedite(hotkey)
                    for hotkey in hotkeys:
                        validator.next_info_check[hotkey] = 0.0 if hotkey in info else now + 1e6
                    validator.next_synthetic_at = 0.0
                    validator.synced_block = -(1 << 62)
                    validator.weights.last_set_block, validator.weights.next_attempt_block = None, 0
                    before = await sim_stats(http, sim_url)
                    timers.reset()
                    at, cpu = time.time(), time.process_time()
                    report = await validator.step(wait=True)
                    cpu = time.process_time() - cpu
                    after = await sim_stats(http, sim_url)
                    outcome = await failures_since(at)
                    check(outcome, f"measured step {index + 1}")
                    async with store.sessions() as session:
                        step_verify_cpu.extend((await session.scalars(select(DeviceVerification.verify_cpu_s).where(
                            DeviceVerification.verified_at >= at))).all())
                    requests = {name: after.get(name, 0) - before.get(name, 0) for name in after}
                    t = timers.total
                    for name, value in (("step_s", report.duration_s), ("step_cpu_s", cpu), ("sync_s", t.get("sync", 0.0)),
                                        ("inventory_s", t.get("inventory", 0.0)), ("rounds_s", t.get("settle", 0.0)),
                                        ("verify_round_s", timers.longest.get("verify_round", 0.0)),
                                        ("synthetic_round_s", t.get("synthetic_round", 0.0)), ("score_s", t.get("score", 0.0)),
                                        ("activity_since_s", t.get("activity_since", 0.0)),
                                        ("latest_verifications_s", t.get("latest_verifications", 0.0)),
                                        ("weights_s", t.get("weights", 0.0))):
                        runs[name].append(value)
                    per_step.append({"step_s": round(report.duration_s, 3), "verify_rounds": report.verifications_started,
                                     "verifications": outcome["verified_ok"], "synthetic_calls": outcome["synthetic_ok"],
                                     "latest_verifications_calls": timers.calls.get("latest_verifications", 0),
                                     "weights_set": bool(report.weights and report.weights.ok), "requests": requests})
                    bar.update(task, advance=1)
            results.update({name: statistics.median(values) for name, values in runs.items()})
            results["step_s_max"] = max(runs["step_s"])
            results["inventory_fanout_s"] = statistics.median(fanouts)
            results["step_over_fanout"] = results["step_s"] / results["inventory_fanout_s"]
            last = per_step[-1]
            results["verify_rounds_in_step"] = last["verify_rounds"]
            results["verifications_in_step"] = last["verifications"]
            results["synthetic_calls_in_step"] = last["synthetic_calls"]
            results["info_checks_in_step"] = last["requests"].get("DeviceInfo", 0) - last["verify_rounds"]
            results["weights_set_in_step"] = last["weights_set"]
            results["step_verify_cpu_s_per_device"] = statistics.mean(step_verify_cpu) if step_verify_cpu else None
            results["per_step"] = per_step
            results["step_cpu_share_of_core"] = results["step_cpu_s"] / step_s
            results["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            await validator.close()
            started = time.perf_counter()  # every 100th step prunes what left the window
            results["prune_rows"] = await store.prune(time.time() - settings.scoring.window_s)
            results["prune_s"] = time.perf_counter() - started
        await store.close()
    finally:
        if sim.poll() is None:
            sim.stdin.close()
            try:
                sim.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sim.kill()
    return results


def reverify_cost(args: argparse.Namespace, workdir: Path, miners: int, devices: int, reverify_s: float) -> dict:
    """The verifier's CPU per device at production size, and per hour at the default schedule."""
    import numpy as np

    from protocol.graval.devices import load_gpu_table
    from protocol.graval.spec import plan, samples_needed
    from validator.graval.session import REVERIFY_FAILURE

    h100 = next(model for model in load_gpu_table() if model.id == "h100")
    prod = plan("GPU-00000000-bench", int(args.prod_memory_gib * (1 << 30)), n=h100.graval_n, b=h100.graval_b)
    again, first = samples_needed(failure=REVERIFY_FAILURE), samples_needed()
    ns = sorted(set(args.verify_n) | {h100.graval_n})
    check = {"n": h100.graval_n, "m": 2, "steps": 4} if args.prod else {"n": args.check_n, "m": args.check_m,
                                                                         "steps": args.check_steps}
    config = {"ns": ns, "samples": {"reverify": again, "first": first}, "repeats": args.verify_repeats,
              "prod_n": h100.graval_n, "prod_m": prod.m, "prod_steps": prod.steps, "check": check,
              "backend": args.prover_backend}
    load = os.getloadavg()[0]
    measured = run_child("verify-cost", write_config(workdir / "verify.json", config))
    load = max(load, os.getloadavg()[0])
    points = measured["points"]
    at_prod = next(point for point in points if point["n"] == h100.graval_n)
    out: dict[str, Any] = {"verify_samples_per_phase": again, "first_samples_per_phase": first, "prod_n": h100.graval_n,
                           "prod_m": prod.m, "prod_steps": prod.steps}
    out["verify_cpu_s_per_device"] = at_prod["reverify_cpu_s"]
    out["verify_cpu_s_per_device_min"] = at_prod["reverify_cpu_s_min"]
    out["first_verify_cpu_s_per_device"] = at_prod["first_cpu_s"]
    out["verify_leaves_per_device"] = at_prod["reverify_leaves"]
    out["openings_wire_mb"] = at_prod["reverify_wire_mb"]
    out["first_openings_wire_mb"] = at_prod["first_wire_mb"]
    if len(points) >= 2:
        slope, intercept = np.polyfit([p["n"] for p in points], [p["reverify_cpu_s"] for p in points], 1)
        out["verify_fit_a_s"], out["verify_fit_b_us_per_n"] = float(intercept), float(slope) * 1e6
    for point in points:
        out[f"verify_cpu_s_at_n{point['n']}"] = point["reverify_cpu_s"]
    out["verify_points"] = points
    checked = measured["check"]
    out.update({"check_n": checked["n"], "check_m": checked["m"], "check_steps": checked["steps"],
                "check_real_cpu_s": checked["real_cpu_s"], "check_exact_cpu_s": checked["exact_cpu_s"],
                "check_exact_over_real": checked["exact_cpu_s"] / checked["real_cpu_s"],
                "check_leaves": [checked["real_leaves"], checked["exact_leaves"]]})
    out["devices_reverified_per_hour"] = miners * devices * 3600.0 / reverify_s
    out["verify_cpu_s_per_hour"] = out["verify_cpu_s_per_device"] * out["devices_reverified_per_hour"]
    out["verify_share_of_core"] = out["verify_cpu_s_per_hour"] / 3600.0
    out["verify_share_of_core_min"] = out["verify_cpu_s_per_device_min"] * out["devices_reverified_per_hour"] / 3600.0
    out["verify_loadavg_1m"] = load  # CPU time per call grows on a busy machine: judge the figures with it
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--miners", type=int, default=256, help="simulated miners")
    parser.add_argument("--devices", type=int, default=8, help="CPU pseudo-devices per miner (16 MiB each)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps (the median is reported)")
    parser.add_argument("--organic-per-miner-hour", type=float, default=12.0, help="organic invocations prefilled per miner and hour")
    parser.add_argument("--verification-history-hours", type=int, default=168,
                        help="hourly GraVal results prefilled per device (168: the whole scoring window)")
    parser.add_argument("--fanout-repeats", type=int, default=3, help="bare Inventory fan-outs before each measured step")
    parser.add_argument("--sim-workers", type=int, default=os.cpu_count() or 1, help="prover processes of the simulator")
    parser.add_argument("--block-time", type=float, default=12.0, help="devnet seconds per block")
    parser.add_argument("--verify-n", type=int, nargs="+", default=[2048, 4096, 8192],
                        help="more matrix sizes for the verifier's cost-vs-n fit (16384 is always measured)")
    parser.add_argument("--verify-repeats", type=int, default=9, help="timed checks per size (the median is used)")
    parser.add_argument("--check-n", type=int, default=1024, help="cross-check: size of the real proof")
    parser.add_argument("--check-m", type=int, default=16, help="cross-check: matrices of the real proof")
    parser.add_argument("--check-steps", type=int, default=256, help="cross-check: access steps of the real proof")
    parser.add_argument("--prover-backend", default="numpy", choices=("auto", "numpy", "torch-cpu", "torch-cuda", "cupy"),
                        help="the cross-check's prover")
    parser.add_argument("--prod", action="store_true",
                        help="cross-check with a real proof at n=16384 (m=2, 4 steps): minutes and ~13 GB on a CPU")
    parser.add_argument("--prod-memory-gib", type=float, default=81559 / 1024, help="H100 memory for the production m and steps")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (store, chain) and print its path")
    parser.add_argument("--verbose", action="store_true", help="show the validator's INFO logs")
    parser.add_argument("--role", choices=("sim", "prefill", "verify-cost"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import uvloop
    from loguru import logger

    logger.remove()
    if args.role == "sim":
        uvloop.run(serve_sim(args.config))
        return
    if args.role == "prefill":
        uvloop.run(prefill(args.config))
        return
    if args.role == "verify-cost":
        verify_cost(args.config)
        return
    logger.add(sys.stderr, level="INFO" if args.verbose else "WARNING")
    if args.miners < 1 or args.devices < 1 or args.steps < 1:
        parser.error("--miners, --devices and --steps must be at least 1")

    from bench.report import print_table

    console = Console(stderr=True)
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="canopy-bench-validator-"))
    try:
        results = uvloop.run(measure(args, workdir, console))
        console.print("verifier: CPU per device challenge at production shape (a fresh process)")
        results.update(reverify_cost(args, workdir, args.miners, args.devices, results["reverify_s"]))
    except RuntimeError as error:
        console.print(f"[red]validator bench failed: {error}")
        raise SystemExit(1) from None
    finally:
        if args.keep:
            console.print(f"kept {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    results["bench_wall_s"] = time.perf_counter() - began
    results["targets"] = TARGETS
    results["meets_targets"] = {name: results[name] <= limit for name, limit in TARGETS.items()}
    checks = {name: (f"<= {limit:g}", results["meets_targets"][name]) for name, limit in TARGETS.items()}
    print_table(f"canopy validator benchmark ({args.miners} miners x {args.devices} devices)", results, checks)
    for name, met in results["meets_targets"].items():
        if not met:
            console.print(f"[red]target missed: {name} = {results[name]:.3f} > {TARGETS[name]:g}")
    print(json.dumps({key: round(value, 6) if isinstance(value, float) else value for key, value in results.items()}))


if __name__ == "__main__":
    main()
