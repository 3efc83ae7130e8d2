"""The miner's GraVal handlers on its axon: Inventory, DeviceInfo, Prove and Open.

Called by ``neurons/miner.py`` (``GravalService(devices, ...).attach(axon)``). A Prove runs
in a worker thread (the axon stays responsive), one challenge per device at a time; the
committed prover is kept as a session until the same validator opens it or it expires,
then its memory is released. Every refusal is a typed protocol error (422 for a
challenge that names an unknown device or does not fit it, 404 for an unknown or expired
session, 429 while the device is busy with another challenge).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable

from loguru import logger

from miner.graval.backends import Backend, NumpyBackend, pick_backend
from miner.graval.prover import Prover
from miner.inventory import live_info
from protocol import errors
from protocol.axon import Axon, Caller
from protocol.graval.devices import DeviceSpec
from protocol.graval.spec import WORKSPACE_MATRICES, ChallengeSpec
from protocol.graval.synapses import (
    Commitment, DeviceInfo, DeviceInfoResponse, Inventory, InventoryResponse, Open, Openings, Prove,
)

ProverFactory = Callable[[ChallengeSpec, Backend], Prover]


@dataclass
class _Session:
    prover: Prover
    caller: str
    uuid: str
    expires_at: float


class GravalService:
    def __init__(self, devices: list[DeviceSpec], *, backend: str = "auto", session_ttl_s: float = 120.0,
                 prover_factory: ProverFactory | None = None) -> None:
        self.claims = list(devices)  # as offered, in order (Inventory)
        self.devices = {device.uuid: device for device in devices}
        self.backend_name = backend
        self.session_ttl_s = session_ttl_s
        self.prover_factory: ProverFactory = prover_factory or (lambda spec, backend_: Prover(spec, backend_))
        self._locks = {uuid: asyncio.Lock() for uuid in self.devices}
        self._sessions: dict[str, _Session] = {}

    def attach(self, axon: Axon) -> "GravalService":
        axon.attach(Inventory, self.inventory)
        axon.attach(DeviceInfo, self.device_info)
        axon.attach(Prove, self.prove)
        axon.attach(Open, self.open)
        return self

    def backend_for(self, device: DeviceSpec) -> Backend:
        if device.kind == "cpu":
            return NumpyBackend()
        return pick_backend(self.backend_name, device.index)

    # --- handlers ----------------------------------------------------------------------

    async def inventory(self, synapse: Inventory, caller: Caller) -> InventoryResponse:
        return InventoryResponse(devices=self.claims)

    async def device_info(self, synapse: DeviceInfo, caller: Caller) -> DeviceInfoResponse:
        unknown = [uuid for uuid in synapse.uuids if uuid not in self.devices]
        if unknown:
            raise errors.InvalidPayload(f"no such device on this miner: {unknown[0]}")
        readings = await asyncio.to_thread(lambda: [live_info(self.devices[uuid]) for uuid in synapse.uuids])
        return DeviceInfoResponse(devices=readings)

    async def prove(self, synapse: Prove, caller: Caller) -> Commitment:
        spec = synapse.spec
        device = self.devices.get(spec.uuid)
        if device is None:
            raise errors.InvalidPayload(f"no such device on this miner: {spec.uuid}")
        needed = spec.resident_bytes + WORKSPACE_MATRICES * spec.n * spec.n
        if needed > device.memory_bytes:
            raise errors.InvalidPayload(f"the challenge needs {needed} bytes; device {spec.uuid} has {device.memory_bytes}")
        lock = self._locks[spec.uuid]
        if lock.locked():
            raise errors.Busy(f"device {spec.uuid} is running another challenge")
        async with lock:
            self._drop_sessions(lambda session: session.uuid == spec.uuid or session.expires_at < time.monotonic())
            prover = self.prover_factory(spec, self.backend_for(device))
            started = time.perf_counter()
            commitment = await asyncio.to_thread(prover.prove)
            logger.info("graval: proved {} on {} ({}) in {:.2f}s for {}", spec.challenge_id[:8], spec.uuid,
                        prover.backend.name, time.perf_counter() - started, caller.hotkey[:8])
            self._sessions[spec.challenge_id] = _Session(prover, caller.hotkey, spec.uuid,
                                                         time.monotonic() + self.session_ttl_s)
        return commitment

    async def open(self, synapse: Open, caller: Caller) -> Openings:
        session = self._sessions.get(synapse.challenge_id)
        if session is None or session.expires_at < time.monotonic() or session.caller != caller.hotkey:
            raise errors.NotFound(f"no committed challenge {synapse.challenge_id} for this caller (expired or never proved)")
        spec = session.prover.spec
        for ref in synapse.leaves:
            limit = (spec.m, spec.n) if ref.kind == "M" else (spec.steps + 1, spec.b)
            if ref.index >= limit[0] or ref.leaf >= limit[1] or (ref.kind == "X" and ref.index == 0):
                raise errors.InvalidPayload(f"{ref.kind}{ref.index}[{ref.leaf}] is outside the challenge")
        del self._sessions[synapse.challenge_id]
        try:
            return await asyncio.to_thread(session.prover.open, list(synapse.leaves))
        finally:
            session.prover.release()

    def _drop_sessions(self, condition: Callable[[_Session], bool]) -> None:
        for challenge_id in [key for key, session in self._sessions.items() if condition(session)]:
            self._sessions.pop(challenge_id).prover.release()
