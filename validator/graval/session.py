"""The validator's GraVal round with one miner: inventory, device info, fill, access, open, verify.

The seam between the validator and a miner's axon.
``GravalVerifier.verify_miner`` asks the miner's axon for its devices, rejects claims that
match no row of the GPU table or disagree with the live readings, then challenges every
remaining device *at the same time*. Each challenge is three timed calls: ``Prove`` (the
fill phase, judged against the model's fill rate), ``Access`` with a seed drawn only after
the fill root arrived (judged on its own against the access rate) and ``Open`` with the
picks drawn after both roots. Each timed call is judged net of the network's round trip
(a ``Ping`` just before, credited up to ``max_rtt_s``). A device passes when both phases
fall inside the model's window and every sample checks out.

A ``device_busy`` answer is an honest miner serving another validator's earlier
challenge: it is accepted only with that challenge's signed ``Prove`` for the same device
from a registered validator, sent before ours, and the device is then retried; anything
else fails the device (``busy_unproven``), so one GPU cannot dodge a sweep for one of two
claims by pleading busy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Collection

from bittensor import http_auth
from loguru import logger

from protocol import errors
from protocol.dendrite import Result, SynapseCaller, TargetLike, as_target
from protocol.nonces import ACCEPT_ALL
from protocol.graval.devices import (
    MAX_WINDOW_HIGH, DeviceRejected, DeviceSpec, GpuModel, LiveDeviceInfo, check_live, match_model,
    uncalibrated_multiplier,
)
from protocol.graval.spec import (
    DEFAULT_FILL_FRACTION, ChallengeSpec, access_order, plan, samples_needed,
)
from protocol.graval.synapses import (
    Access, AccessCommitment, DeviceInfo, DeviceInfoResponse, FillCommitment, Inventory, InventoryResponse, Open,
    Openings, Prove,
)
from protocol.synapse import Ping, Synapse
from protocol.graval.verifier import check_commitments, leaves_for, pick_samples, verify


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
    elapsed_s: float = 0.0  # fill + access, net of the network allowance
    expected_s: float = 0.0
    throughput_macs_s: float = 0.0
    fill_s: float = 0.0
    access_s: float = 0.0
    proven_bytes: int = 0  # the memory the passing proof established (resident matrices + workspace)
    proven_fraction: float = 0.0  # of what a whole-device proof would establish (< 1 beside instances)
    serving: bool = False  # proved beside hosted instances, on the memory they leave free
    calibrated: bool = False  # the model's timing row was measured on real hardware
    multiplier: float = 0.0  # what the device earns in the capacity term (0 unless it passed)
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


def _timed_verify(spec: ChallengeSpec, fill: FillCommitment, access: AccessCommitment, order: list[int],
                  samples: list, openings: Openings) -> tuple[Any, float]:
    started = time.thread_time()
    verdict = verify(spec, fill, access, order, samples, openings)
    return verdict, time.thread_time() - started


#: Longest a challenge holds a device (fill + access + open) that a busy plea may cite.
MAX_CHALLENGE_AGE_S = 900.0


class GravalVerifier:
    def __init__(self, dendrite: SynapseCaller, table: list[GpuModel], *, allow_cpu: bool, samples: int | None = None,
                 reverify_samples: int | None = None, fill_fraction: float = DEFAULT_FILL_FRACTION,
                 steps_per_matrix: int | None = None, max_rtt_s: float = 0.2, network_margin_s: float = 5.0,
                 open_timeout_s: float = 60.0, max_busy_wait_s: float = 300.0,
                 hash_seed_ttl_s: float = 300.0, serving_slack: float = 1.3,
                 is_validator: Callable[[str], bool] | None = None,
                 rng: random.Random | None = None) -> None:
        self.dendrite = dendrite
        self.table = table
        self.allow_cpu = allow_cpu
        self.samples = samples or samples_needed()
        self.reverify_samples = min(self.samples, reverify_samples or samples_needed(failure=REVERIFY_FAILURE))
        self.fill_fraction = fill_fraction
        self.steps_per_matrix = steps_per_matrix
        self.max_rtt_s = max_rtt_s
        self.network_margin_s = network_margin_s
        self.open_timeout_s = open_timeout_s
        self.max_busy_wait_s = max_busy_wait_s
        self.hash_seed_ttl_s = hash_seed_ttl_s
        self.serving_slack = serving_slack
        self.is_validator = is_validator or (lambda hotkey: False)
        self.rng = rng
        self._hash_seed = ("", 0.0)

    def hash_seed(self) -> str:
        """The commitment hash's key, shared by the challenges of one sweep and renewed after
        ``hash_seed_ttl_s`` (the verifier's key products are computed once per key)."""
        seed, since = self._hash_seed
        if not seed or time.monotonic() - since > self.hash_seed_ttl_s:
            self._hash_seed = (secrets.token_hex(32), time.monotonic())
        return self._hash_seed[0]

    async def verify_miner(self, target: TargetLike, hotkey: str = "", known: Collection[str] = (),
                           prove_at: float | None = None) -> list[DeviceResult]:
        """Every claimed device of one miner, challenged concurrently; devices in ``known``
        (passed before) are sampled at the re-verification soundness. ``prove_at`` (a
        ``time.monotonic()`` instant, a sweep's): every Prove goes out at that instant, so a
        miner cannot shift its challenge in time by answering Inventory or DeviceInfo slowly;
        one whose answers arrive after it fails ``late_for_sweep``."""
        hotkey = hotkey or as_target(target).hotkey
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
        reserved = {load.uuid: load.reserved_bytes for load in answer.response.loads}
        if prove_at is not None:
            late = time.monotonic() - prove_at
            if late > 0:
                return [self._fail(hotkey, claim, "late_for_sweep", f"inventory and readings came {late:.1f}s after "
                                   "the sweep's challenges went out") for claim in claims]
            await asyncio.sleep(prove_at - time.monotonic())
        results = await asyncio.gather(*(
            self._duplicate(hotkey, claim) if counts[claim.uuid] > 1 else self.verify_device(
                target, hotkey, claim, live.get(claim.uuid),
                samples=self.reverify_samples if claim.uuid in known else self.samples,
                reserved_bytes=reserved.get(claim.uuid, 0))
            for claim in claims
        ))
        return list(results)

    async def _live_readings(self, target: TargetLike, uuids: list[str]) -> dict[str, LiveDeviceInfo]:
        answer = await self.dendrite.call(target, DeviceInfo(uuids=uuids), timeout=15)
        if not answer.ok or not isinstance(answer.response, DeviceInfoResponse):
            return {}
        return {reading.uuid: reading for reading in answer.response.devices}

    async def _duplicate(self, hotkey: str, claim: DeviceSpec) -> DeviceResult:
        return self._fail(hotkey, claim, "duplicate_uuid", "the same device uuid is claimed more than once")

    def _fail(self, hotkey: str, claim: DeviceSpec, reason: str, detail: str, **extra: Any) -> DeviceResult:
        logger.info("graval: {} device {} failed: {} ({})", hotkey[:8], claim.uuid, reason, detail)
        return DeviceResult(hotkey, claim.uuid, False, reason, detail, name=claim.name, memory_bytes=claim.memory_bytes, **extra)

    async def verify_device(self, target: TargetLike, hotkey: str, claim: DeviceSpec, live: LiveDeviceInfo | None,
                            samples: int | None = None, reserved_bytes: int = 0) -> DeviceResult:
        try:
            model = match_model(claim, self.table, allow_cpu=self.allow_cpu)
            if live is None:
                return self._fail(hotkey, claim, "no_device_info", "the miner gave no live reading for this device", model_id=model.id)
            check_live(claim, live, model)
        except DeviceRejected as rejected:
            return self._fail(hotkey, claim, rejected.reason, str(rejected))
        steps = self.steps_per_matrix or model.graval_steps_per_matrix
        full = plan(claim.uuid, claim.memory_bytes, n=model.graval_n, b=model.graval_b, hash_seed=self.hash_seed(),
                    fill_fraction=self.fill_fraction, steps_per_matrix=steps)
        if not reserved_bytes:
            return await self.challenge(target, hotkey, claim, model, full, samples)
        try:  # serving: prove the memory its instances leave free, beside them
            spec = plan(claim.uuid, claim.memory_bytes - min(reserved_bytes, claim.memory_bytes), n=model.graval_n,
                        b=model.graval_b, hash_seed=self.hash_seed(), fill_fraction=self.fill_fraction, steps_per_matrix=steps)
        except ValueError:
            return self._fail(hotkey, claim, "no_free_memory", f"its instances hold {reserved_bytes} of "
                              f"{claim.memory_bytes} bytes: too little left to prove", model_id=model.id)
        return await self.challenge(target, hotkey, claim, model, spec, samples, full=full)

    async def _network_allowance(self, target: TargetLike) -> float:
        """The round trip of a tiny signed call just before a timed one, credited up to ``max_rtt_s``."""
        answer = await self.dendrite.call(target, Ping(), timeout=5)
        return min(answer.latency_s, self.max_rtt_s) if answer.ok else 0.0

    async def _timed(self, target: TargetLike, synapse: Synapse, expected: float, model: GpuModel) -> tuple[Result, float]:
        allowance = await self._network_allowance(target)
        started = time.perf_counter()
        answer = await self.dendrite.call(target, synapse, timeout=expected * model.window_high + self.network_margin_s)
        return answer, max(0.0, time.perf_counter() - started - allowance)

    async def challenge(self, target: TargetLike, hotkey: str, claim: DeviceSpec, model: GpuModel, spec: ChallengeSpec,
                        samples: int | None = None, full: ChallengeSpec | None = None) -> DeviceResult:
        """One fill / access / open round for a device already matched to ``model``; ``full``
        is the whole-device challenge when ``spec`` proves only what serving leaves free."""
        fill_expected = model.expected_seconds("fill", spec.fill_macs)
        access_expected = model.expected_seconds("access", spec.access_macs)
        if full is not None:  # beside busy instances: slack for sharing the device, never reaching 2x on a GPU row
            window_high = model.window_high * self.serving_slack
            if not model.devnet_only:
                window_high = min(window_high, 0.95 * MAX_WINDOW_HIGH)
            model = model.model_copy(update={"window_high": window_high})
        common: dict[str, Any] = {"model_id": model.id, "expected_s": fill_expected + access_expected,
                                  "calibrated": model.calibrated, "serving": full is not None}
        waited = 0.0
        while True:
            sent_at = time.time()
            answer, fill_s = await self._timed(target, Prove(spec=spec), fill_expected, model)
            if answer.ok or answer.error is None or answer.error.type != "device_busy" or waited >= self.max_busy_wait_s:
                break
            wait = self._busy_wait(answer.error, target, claim, sent_at)
            if wait is None:
                return self._fail(hotkey, claim, "busy_unproven", "device_busy without a valid earlier challenge of "
                                  "another validator for this device", **common)
            logger.info("graval: {} device {} busy with another validator's challenge; retry in {:.0f}s",
                        hotkey[:8], claim.uuid, wait)
            await asyncio.sleep(wait)
            waited += wait
        common.update(fill_s=fill_s)
        if not answer.ok or not isinstance(answer.response, FillCommitment):
            reason = "too_slow" if answer.status == "timeout" else "prove_failed"
            return self._fail(hotkey, claim, reason, f"fill: {answer.error}", **common)
        fill = answer.response
        refusal = check_commitments(spec, fill)
        if refusal is not None:
            return self._fail(hotkey, claim, refusal.reason, refusal.detail, **common)
        access_seed = secrets.token_bytes(32)  # drawn now: the matrices are committed
        answer, access_s = await self._timed(target, Access(challenge_id=spec.challenge_id, access_seed=access_seed.hex()),
                                             access_expected, model)
        elapsed = fill_s + access_s
        common.update(access_s=access_s, elapsed_s=elapsed, throughput_macs_s=spec.work_macs / max(elapsed, 1e-9))
        if not answer.ok or not isinstance(answer.response, AccessCommitment):
            reason = "too_slow" if answer.status == "timeout" else "access_failed"
            return self._fail(hotkey, claim, reason, f"access: {answer.error}", **common)
        access = answer.response
        refusal = check_commitments(spec, fill, access)
        if refusal is not None:
            return self._fail(hotkey, claim, refusal.reason, refusal.detail, **common)
        for phase, took, expected in (("fill", fill_s, fill_expected), ("access", access_s, access_expected)):
            if took > expected * model.window_high:
                return self._fail(hotkey, claim, "too_slow", f"{phase} {took:.3f}s > {model.window_high:g} x "
                                  f"{expected:.3f}s expected of {model.id}", **common)
            if took < expected * model.window_low:
                return self._fail(hotkey, claim, "too_fast", f"{phase} {took:.3f}s < {model.window_low:g} x "
                                  f"{expected:.3f}s expected of {model.id}", **common)
        order = access_order(spec, access_seed)
        picked = pick_samples(spec, samples or self.samples, self.rng)
        refs = leaves_for(spec, order, picked)
        opened = await self.dendrite.call(target, Open(challenge_id=spec.challenge_id, leaves=refs), timeout=self.open_timeout_s)
        if not opened.ok or not isinstance(opened.response, Openings):
            return self._fail(hotkey, claim, "open_failed", str(opened.error), samples=len(picked), **common)
        verdict, cpu = await asyncio.to_thread(_timed_verify, spec, fill, access, order, picked, opened.response)
        common["verify_cpu_s"] = cpu
        if not verdict.ok:
            return self._fail(hotkey, claim, verdict.reason, verdict.detail, samples=len(picked), **common)
        proven = spec.resident_bytes + spec.workspace_bytes
        whole = full or spec
        fraction = min(1.0, proven / (whole.resident_bytes + whole.workspace_bytes))
        logger.info("graval: {} device {} ({}) verified: fill {:.2f}s ({:.2f}x), access {:.2f}s ({:.2f}x)", hotkey[:8],
                    claim.uuid, model.id, fill_s, fill_s / fill_expected, access_s, access_s / access_expected)
        return DeviceResult(hotkey, claim.uuid, True, "ok", verdict.detail, name=claim.name, memory_bytes=claim.memory_bytes,
                            samples=len(picked), proven_bytes=proven, proven_fraction=fraction,
                            multiplier=fraction * uncalibrated_multiplier(model, proven, self.table),
                            **common)

    def _busy_wait(self, error: errors.ProtocolError, target: TargetLike, claim: DeviceSpec, sent_at: float) -> float | None:
        """Seconds to wait before retrying a busy device, or None when the plea is not proven:
        the evidence must be a ``Prove`` for this device, signed for this miner by another
        registered validator, sent before ours and recently."""
        detail = error.detail or {}
        evidence = detail.get("evidence") if isinstance(detail, dict) else None
        if not isinstance(evidence, dict):
            return None
        try:
            body = base64.b64decode(evidence["body"], validate=True)
            caller = http_auth.verify(
                {str(k): str(v) for k, v in evidence["headers"].items()}, body, method=str(evidence["method"]),
                path=str(evidence["path"]), self_hotkey_ss58=as_target(target).hotkey, max_age=MAX_CHALLENGE_AGE_S,
                require_receiver=True, nonce_store=ACCEPT_ALL,
            )
            other = Prove.model_validate(json.loads(body))
        except Exception:  # noqa: BLE001 - any malformed or forged evidence is simply not evidence
            return None
        if (str(evidence["path"]) != Prove.route() or other.spec.uuid != claim.uuid or caller.hotkey_ss58 == self.dendrite.hotkey
                or not self.is_validator(caller.hotkey_ss58) or caller.nonce_ns / 1e9 > sent_at):
            return None
        retry = detail.get("retry_after_s", 5)
        return float(min(max(1.0, float(retry) if isinstance(retry, (int, float)) else 5.0), 30.0))
