"""The validator benchmark's simulated miners (seam: everything the validator talks to on the wire).

A child of the validator benchmark (``--role sim --config FILE``); the store prefill
imports what the miners offer (``bench_chute``, ``miner_devices``) so that its rows name
the same chute and device uuids. ONE aiohttp server on 127.0.0.1 answers for every
miner, telling them apart by the btauth receiver header (no signature check). Each miner
offers ``--devices`` CPU pseudo-devices of 16 MiB (``miner.inventory.cpu_device``, uuids
derived from the hotkey) and hosts one JSON chute (one POST cord with pydantic input and
output schemas, one ready instance). It answers ``Inventory``, ``DeviceInfo`` (live
readings that match the claims), ``Ping`` (the validator's round-trip probe), ``Prove`` (the fill phase of a REAL honest ``Prover`` on
numpy for the spec received, in a pool of ``--sim-workers`` processes; the prover stays in
its worker until ``Open``), ``Access`` (its access phase in the order of the validator's
seed, in the same worker), ``Open`` and ``Invoke`` (one NDJSON chunk: status 200, a body valid against the
output schema, ``compute_s`` 0.05). ``GET /stats`` counts the requests per synapse. It
prints ``{"port": N}`` once listening and serves until its stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

MIB = 1 << 20
DEVICE_MEMORY = 16 * MIB  # the smallest CPU pseudo-device the GPU table accepts (n = 1024, 9 matrices)
CHUTE_PATH = "/classify"
INVOKE_COMPUTE_S = 0.05


# --- what the simulated miners offer (shared with the prefill) -----------------------------------------


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



# --- the server ------------------------------------------------------------------------------------

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
    commitment = prover.fill()
    _PROVERS[spec.challenge_id] = prover
    return commitment.model_dump_json()


def _access_in_worker(challenge_id: str, access_seed: str) -> str | None:
    prover = _PROVERS.get(challenge_id)
    if prover is None:
        return None
    return prover.access(bytes.fromhex(access_seed)).model_dump_json()


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

    async def access(self, challenge_id: str, access_seed: str) -> str | None:
        index = self.owner.get(challenge_id)
        if index is None:
            return None
        self.busy[index] += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executors[index], _access_in_worker,
                                                                    challenge_id, access_seed)
        finally:
            self.busy[index] -= 1

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
    from protocol.synapse import Pong
    from protocol.graval.synapses import Access, DeviceInfo, DeviceInfoResponse, InventoryResponse, Open, Prove

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
        if name == "Access":
            request = Access.model_validate_json(body)
            committed = await pool.access(request.challenge_id, request.access_seed)
            if committed is None:
                return refuse(errors.NotFound(f"no filled challenge {request.challenge_id}"))
            return json_response(committed)
        if name == "Open":
            challenge_id = Open.model_validate_json(body).challenge_id
            opened = await pool.open(challenge_id, body.decode())
            if opened is None:
                return refuse(errors.NotFound(f"no committed challenge {challenge_id}"))
            return json_response(opened)
        if name == "Ping":  # the validator's round-trip probe before each timed GraVal call
            return json_response(Pong(hotkey=hotkey).model_dump_json())
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




async def sim_stats(session: Any, url: str) -> dict[str, int]:
    """Requests answered so far per synapse (``GET /stats``)."""
    async with session.get(url + "/stats") as response:
        return await response.json()
