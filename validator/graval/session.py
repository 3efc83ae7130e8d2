"""The validator's GraVal round with one miner: inventory, device info, prove, open, verify.

Called by the validator loop (and tests, ``bench``). ``GravalVerifier.verify_miner``
asks the miner's axon for its devices, rejects claims that match no row of the GPU
table or disagree with the live readings, then challenges every remaining device *at the
same time* (one GPU cannot answer for two claims within their windows), each with a
fresh seed bound to that device's uuid. A device passes when its commitment arrived
inside the model's time window and every sampled entry checks out. The result of every
device, pass or fail, with its reason and achieved throughput, is a ``DeviceResult``.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Collection

from loguru import logger

from protocol.dendrite import Dendrite
from protocol.graval.devices import DeviceRejected, DeviceSpec, GpuModel, LiveDeviceInfo, check_live, match_model
from protocol.graval.spec import DEFAULT_FILL_FRACTION, DEFAULT_STEPS_PER_MATRIX, ChallengeSpec, plan, samples_needed
from protocol.graval.synapses import (
    Commitment, DeviceInfo, DeviceInfoResponse, Inventory, InventoryResponse, Open, Openings, Prove,
)
from validator.graval.verifier import check_commitment, leaves_for, pick_samples, verify


@dataclass
class DeviceResult:
    """One device's outcome; ``reason`` is "ok" or the first check that failed."""

    miner_hotkey: str
    uuid: str
    ok: bool
    reason: str
    detail: str = ""
    model_id: str = ""
    name: str = ""
    memory_bytes: int = 0
    elapsed_s: float = 0.0
    expected_s: float = 0.0
    throughput_macs_s: float = 0.0
    samples: int = 0
    verify_cpu_s: float = 0.0  # the validator's CPU for checking the openings (thread time)
    verified_at: float = field(default_factory=time.time)

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


#: Re-verifying a device that already passed: a prover skipping 10% of the work passes one
#: round with probability <= 1e-2 (vs 1e-6 for a new device; 137 samples per phase vs 410).
#: A single failure zeroes the device at once, so hourly rounds catch it within the hour
#: with probability >= 0.99 and leave it 4e-49 to survive a day, for a third of the
#: verifier's CPU (README, "Decisions taken here": measured by bench/validator.py).
REVERIFY_FAILURE = 1e-2


def _timed_verify(spec: ChallengeSpec, commitment: Commitment, samples: list, openings: Openings) -> tuple[Any, float]:
    started = time.thread_time()
    verdict = verify(spec, commitment, samples, openings)
    return verdict, time.thread_time() - started


class GravalVerifier:
    def __init__(self, dendrite: Dendrite, table: list[GpuModel], *, allow_cpu: bool, samples: int | None = None,
                 reverify_samples: int | None = None,
                 fill_fraction: float = DEFAULT_FILL_FRACTION, steps_per_matrix: int = DEFAULT_STEPS_PER_MATRIX,
                 network_margin_s: float = 5.0, open_timeout_s: float = 60.0, rng: random.Random | None = None) -> None:
        self.dendrite = dendrite
        self.table = table
        self.allow_cpu = allow_cpu
        self.samples = samples or samples_needed()
        self.reverify_samples = min(self.samples, reverify_samples or samples_needed(failure=REVERIFY_FAILURE))
        self.fill_fraction = fill_fraction
        self.steps_per_matrix = steps_per_matrix
        self.network_margin_s = network_margin_s
        self.open_timeout_s = open_timeout_s
        self.rng = rng

    async def verify_miner(self, target: Any, hotkey: str = "", known: Collection[str] = ()) -> list[DeviceResult]:
        """Every claimed device of one miner, challenged concurrently; devices in ``known``
        (passed before) are sampled at the re-verification soundness."""
        hotkey = hotkey or getattr(target, "hotkey", "")
        answer = await self.dendrite.call(target, Inventory(), timeout=15)
        if not answer.ok or not isinstance(answer.response, InventoryResponse):
            logger.info("graval: {} gave no inventory ({})", hotkey[:8], answer.error)
            return []
        claims = answer.response.devices
        if not claims:
            return []
        counts: dict[str, int] = {}
        for claim in claims:
            counts[claim.uuid] = counts.get(claim.uuid, 0) + 1
        live = await self._live_readings(target, sorted(counts))
        results = await asyncio.gather(*(
            self._duplicate(hotkey, claim) if counts[claim.uuid] > 1 else self.verify_device(
                target, hotkey, claim, live.get(claim.uuid),
                samples=self.reverify_samples if claim.uuid in known else self.samples)
            for claim in claims
        ))
        return list(results)

    async def _live_readings(self, target: Any, uuids: list[str]) -> dict[str, LiveDeviceInfo]:
        answer = await self.dendrite.call(target, DeviceInfo(uuids=uuids), timeout=15)
        if not answer.ok or not isinstance(answer.response, DeviceInfoResponse):
            return {}
        return {reading.uuid: reading for reading in answer.response.devices}

    async def _duplicate(self, hotkey: str, claim: DeviceSpec) -> DeviceResult:
        return self._fail(hotkey, claim, "duplicate_uuid", "the same device uuid is claimed more than once")

    def _fail(self, hotkey: str, claim: DeviceSpec, reason: str, detail: str, **extra: Any) -> DeviceResult:
        logger.info("graval: {} device {} failed: {} ({})", hotkey[:8], claim.uuid, reason, detail)
        return DeviceResult(hotkey, claim.uuid, False, reason, detail, name=claim.name, memory_bytes=claim.memory_bytes, **extra)

    async def verify_device(self, target: Any, hotkey: str, claim: DeviceSpec, live: LiveDeviceInfo | None,
                            samples: int | None = None) -> DeviceResult:
        try:
            model = match_model(claim, self.table, allow_cpu=self.allow_cpu)
            if live is None:
                return self._fail(hotkey, claim, "no_device_info", "the miner gave no live reading for this device", model_id=model.id)
            check_live(claim, live, model)
        except DeviceRejected as rejected:
            return self._fail(hotkey, claim, rejected.reason, str(rejected))
        spec = plan(claim.uuid, claim.memory_bytes, n=model.graval_n, b=model.graval_b,
                    fill_fraction=self.fill_fraction, steps_per_matrix=self.steps_per_matrix)
        return await self.challenge(target, hotkey, claim, model, spec, samples)

    async def challenge(self, target: Any, hotkey: str, claim: DeviceSpec, model: GpuModel, spec: ChallengeSpec,
                        samples: int | None = None) -> DeviceResult:
        """One prove/open round for a device already matched to ``model``."""
        expected = spec.work_macs / model.challenge_macs_per_s
        common = {"model_id": model.id, "expected_s": expected}
        started = time.perf_counter()
        answer = await self.dendrite.call(target, Prove(spec=spec), timeout=expected * model.window_high + self.network_margin_s)
        elapsed = time.perf_counter() - started
        common.update(elapsed_s=elapsed, throughput_macs_s=spec.work_macs / elapsed)
        if not answer.ok or not isinstance(answer.response, Commitment):
            reason = "too_slow" if answer.status == "timeout" else "prove_failed"
            return self._fail(hotkey, claim, reason, str(answer.error), **common)
        commitment = answer.response
        refusal = check_commitment(spec, commitment)
        if refusal is not None:
            return self._fail(hotkey, claim, refusal.reason, refusal.detail, **common)
        if elapsed > expected * model.window_high:
            return self._fail(hotkey, claim, "too_slow", f"{elapsed:.2f}s > {model.window_high:g} x {expected:.2f}s expected of {model.id}", **common)
        if elapsed < expected * model.window_low:
            return self._fail(hotkey, claim, "too_fast", f"{elapsed:.3f}s < {model.window_low:g} x {expected:.2f}s expected of {model.id}", **common)
        samples = pick_samples(spec, samples or self.samples, self.rng)
        refs = leaves_for(spec, commitment, samples)
        opened = await self.dendrite.call(target, Open(challenge_id=spec.challenge_id, leaves=refs), timeout=self.open_timeout_s)
        if not opened.ok or not isinstance(opened.response, Openings):
            return self._fail(hotkey, claim, "open_failed", str(opened.error), samples=len(samples), **common)
        verdict, cpu = await asyncio.to_thread(_timed_verify, spec, commitment, samples, opened.response)
        common["verify_cpu_s"] = cpu
        if not verdict.ok:
            return self._fail(hotkey, claim, verdict.reason, verdict.detail, samples=len(samples), **common)
        logger.info("graval: {} device {} ({}) verified in {:.2f}s ({:.2f}x expected)", hotkey[:8], claim.uuid, model.id,
                    elapsed, elapsed / expected)
        return DeviceResult(hotkey, claim.uuid, True, "ok", verdict.detail, name=claim.name, memory_bytes=claim.memory_bytes,
                            samples=len(samples), **common)
