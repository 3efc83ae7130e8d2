"""The miner's GraVal handlers on its axon: Inventory, DeviceInfo, Prove, Access and Open.

The seam between the miner's axon (``GravalService(devices, ...).attach(axon)``) and the
prover. A challenge occupies its device from ``Prove`` until its validator's ``Open`` (or
until it expires ``session_ttl_s`` after its last phase): its matrices are resident all that
time, so a second challenge cannot share the device. Another validator's ``Prove`` meanwhile
gets ``DeviceBusy`` carrying the occupying challenge's request as its validator signed it
(the evidence that lets it retry instead of failing the device) and a ``Retry-After``; the
occupying session is never dropped for it. The same validator proving again replaces its own
session.

Each phase runs in a worker thread (the axon stays responsive). When the validator hangs
up (its timeout), the handler is cancelled, the prover stops at its next step and the
device is freed once the thread has really stopped, so a timed-out round never leaves
the device locked. Every refusal is a typed protocol error (422 for a challenge that
names an unknown device, does not fit it or its free memory, or comes out of phase order;
404 for an unknown or expired session; 429 ``device_busy``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from loguru import logger

from miner.graval.backends import ArrayBackend, NumpyBackend, pick_backend
from miner.graval.prover import ProofCancelled, Prover
from miner.inventory import live_info
from protocol import errors
from protocol.axon import Axon, Caller, SignedRequest
from protocol.graval.devices import DeviceSpec
from protocol.graval.spec import ChallengeSpec
from protocol.graval.synapses import (
    Access, AccessCommitment, DeviceInfo, DeviceInfoResponse, DeviceLoad, FillCommitment, Inventory,
    InventoryResponse, Open, Openings, Prove,
)

ProverFactory = Callable[[ChallengeSpec, ArrayBackend], Prover]
#: The Retry-After of a busy device: an occupying challenge usually ends within seconds
#: (its validator opens right after the access phase), so the next validator looks again soon.
BUSY_RETRY_S = 5


def instances_memory(device: DeviceSpec) -> int:
    """Memory in use on a GPU (its instances' weights and caches), from the live reading;
    the devnet's CPU pseudo-device reserves nothing. Reporting more than the truth only
    shrinks the miner's own proof and its capacity credit (README, GraVal: serving)."""
    if device.kind == "cpu":
        return 0
    return live_info(device).memory_used_bytes


def busy_evidence(signed: SignedRequest | None) -> dict[str, Any] | None:
    """The occupying challenge's signed ``Prove``, as ``DeviceBusy.detail`` carries it."""
    if signed is None:
        return None
    return {"method": signed.method, "path": signed.path, "headers": signed.headers,
            "body": base64.b64encode(signed.body).decode()}


@dataclass
class _Session:
    prover: Prover
    caller: str
    uuid: str
    signed: SignedRequest | None
    expires_at: float
    phase: str = "fill"  # fill -> filled -> access -> accessed -> open
    running: asyncio.Future[Any] | None = field(default=None, repr=False)


class GravalService:
    def __init__(self, devices: list[DeviceSpec], *, backend: str = "auto", session_ttl_s: float = 120.0,
                 prover_factory: ProverFactory | None = None, reserved: Callable[[DeviceSpec], int] | None = None) -> None:
        self.claims = list(devices)  # as offered, in order (Inventory)
        self.devices = {device.uuid: device for device in devices}
        self.backend_name = backend
        self.session_ttl_s = session_ttl_s
        self.prover_factory: ProverFactory = prover_factory or (lambda spec, backend_: Prover(spec, backend_))
        self.reserved = reserved or instances_memory
        self._occupant: dict[str, _Session] = {}  # device uuid -> the challenge holding it
        self._sessions: dict[str, _Session] = {}  # challenge id -> session

    def attach(self, axon: Axon) -> "GravalService":
        axon.attach(Inventory, self.inventory)
        axon.attach(DeviceInfo, self.device_info)
        axon.attach(Prove, self.prove, long_running=True)
        axon.attach(Access, self.access, long_running=True)
        axon.attach(Open, self.open, long_running=True)
        return self

    def backend_for(self, device: DeviceSpec) -> ArrayBackend:
        if device.kind == "cpu":
            return NumpyBackend()
        return pick_backend(self.backend_name, device.index)

    # --- handlers ----------------------------------------------------------------------

    async def inventory(self, synapse: Inventory, caller: Caller) -> InventoryResponse:
        return InventoryResponse(devices=self.claims, loads=await self.loads())

    async def loads(self) -> list[DeviceLoad]:
        """Per device, what its hosted instances hold (the chute service's Inventory carries it too)."""
        return await asyncio.to_thread(self._loads)

    def _loads(self) -> list[DeviceLoad]:
        """What the instances hold on each device not running a challenge (during one, the
        reading would count the prover's own matrices)."""
        return [DeviceLoad(uuid=device.uuid, reserved_bytes=self.reserved(device))
                for device in self.claims if device.uuid not in self._occupant]

    async def device_info(self, synapse: DeviceInfo, caller: Caller) -> DeviceInfoResponse:
        unknown = [uuid for uuid in synapse.uuids if uuid not in self.devices]
        if unknown:
            raise errors.InvalidPayload(f"no such device on this miner: {unknown[0]}")
        readings = await asyncio.to_thread(lambda: [live_info(self.devices[uuid]) for uuid in synapse.uuids])
        return DeviceInfoResponse(devices=readings)

    async def prove(self, synapse: Prove, caller: Caller) -> FillCommitment:
        spec = synapse.spec
        device = self.devices.get(spec.uuid)
        if device is None:
            raise errors.InvalidPayload(f"no such device on this miner: {spec.uuid}")
        needed = spec.resident_bytes + spec.workspace_bytes
        if needed > device.memory_bytes:
            raise errors.InvalidPayload(f"the challenge needs {needed} bytes; device {spec.uuid} has {device.memory_bytes}")
        free = device.memory_bytes - await asyncio.to_thread(self.reserved, device)
        if needed > free and spec.uuid not in self._occupant:
            raise errors.InvalidPayload(f"the challenge needs {needed} bytes; device {spec.uuid} has {free} free beside "
                                        "its instances")
        await self._claim_device(spec.uuid, caller)
        session = _Session(self.prover_factory(spec, self.backend_for(device)), caller.hotkey, spec.uuid, caller.signed,
                           time.monotonic() + self.session_ttl_s)
        self._occupant[spec.uuid] = session
        self._sessions[spec.challenge_id] = session
        started = time.perf_counter()
        commitment = await self._run(session, session.prover.fill)
        session.phase = "filled"
        logger.info("graval: filled {} on {} ({}) in {:.2f}s for {}", spec.challenge_id[:8], spec.uuid,
                    session.prover.backend.name, time.perf_counter() - started, caller.hotkey[:8])
        return commitment

    async def access(self, synapse: Access, caller: Caller) -> AccessCommitment:
        session = self._session(synapse.challenge_id, caller, "filled")
        session.phase = "access"
        commitment = await self._run(session, session.prover.access, bytes.fromhex(synapse.access_seed))
        session.phase = "accessed"
        return commitment

    async def open(self, synapse: Open, caller: Caller) -> Openings:
        session = self._session(synapse.challenge_id, caller, "accessed")
        spec = session.prover.spec
        for ref in synapse.leaves:
            limit = (spec.m, spec.n) if ref.kind == "M" else (spec.steps + 1, spec.b)
            if ref.index >= limit[0] or ref.leaf >= limit[1] or (ref.kind == "X" and ref.index == 0):
                raise errors.InvalidPayload(f"{ref.kind}{ref.index}[{ref.leaf}] is outside the challenge")
        session.phase = "open"
        try:
            return await self._run(session, session.prover.open, list(synapse.leaves))
        finally:
            self._end(session)

    # --- sessions ------------------------------------------------------------------------

    async def _claim_device(self, uuid: str, caller: Caller) -> None:
        """Free the device for a new challenge of ``caller``, or refuse with evidence."""
        occupant = self._occupant.get(uuid)
        if occupant is None:
            return
        if occupant.caller != caller.hotkey and occupant.expires_at > time.monotonic():
            retry = max(1, min(BUSY_RETRY_S, int(occupant.expires_at - time.monotonic()) + 1))
            raise errors.DeviceBusy(f"device {uuid} is running an earlier challenge of another validator",
                                    detail={"evidence": busy_evidence(occupant.signed), "retry_after_s": retry},
                                    headers={"Retry-After": str(retry)})
        await self._stop(occupant)  # expired, or the same validator starting over

    def _session(self, challenge_id: str, caller: Caller, phase: str) -> _Session:
        session = self._sessions.get(challenge_id)
        if session is None or session.caller != caller.hotkey or session.expires_at < time.monotonic():
            if session is not None and session.expires_at < time.monotonic() and session.running is None:
                self._end(session)
            raise errors.NotFound(f"no committed challenge {challenge_id} for this caller (expired or never proved)")
        if session.phase != phase:
            raise errors.InvalidPayload(f"challenge {challenge_id} is in phase {session.phase!r}, not {phase!r}")
        return session

    async def _run(self, session: _Session, work: Callable[..., Any], *args: Any) -> Any:
        """Run one phase in a thread; on cancellation stop the prover, wait for the thread and free the device."""
        session.running = asyncio.ensure_future(asyncio.to_thread(work, *args))
        try:
            return await asyncio.shield(session.running)
        except asyncio.CancelledError:
            await self._stop(session)
            raise
        except ProofCancelled:
            self._end(session)
            raise errors.NotFound("the challenge was cancelled") from None
        except BaseException:
            self._end(session)
            raise
        finally:
            session.running = None
            session.expires_at = time.monotonic() + self.session_ttl_s

    async def _stop(self, session: _Session) -> None:
        session.prover.cancel.set()
        running = session.running
        if running is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(running)
        self._end(session)

    def _end(self, session: _Session) -> None:
        session.prover.cancel.set()
        if self._occupant.get(session.uuid) is session:
            del self._occupant[session.uuid]
        self._sessions.pop(session.prover.spec.challenge_id, None)
        session.prover.release()
