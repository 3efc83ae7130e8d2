"""The validator's two kinds of background work on miners: GraVal rounds and synthetic rounds.

The loop decides when each is due and runs them as tasks, so that a long GPU proof never
holds up the step. Each round writes its results to the store (``store.queries``) in one
transaction and counts them in the metrics.

- ``verify_round``: one miner's devices through ``GravalVerifier`` (inventory, live
  readings, concurrent prove/open); claims of a uuid another hotkey owns are refused as
  ``uuid_taken`` (``validator.identity``); a first (solo) round then tells the schedule.
- ``sweep``: every miner's ``verify_round`` started at the same moment (re-verification),
  so one GPU cannot answer for two hotkeys; a device the miner claimed this step but did not
  offer to the sweep fails as ``not_offered``.
- ``device_info_check``: between rounds, the live readings of a miner's verified devices
  against their claims; a device whose readings no longer match is recorded as failed at
  once (it is challenged again in the next sweep).
- ``synthetic_round``: one seed for the whole round, so every miner hosting a chute gets
  byte-identical probes; LLM outputs are then compared across miners and the minority
  flagged (``validator.synthetic``). Each successful, unflagged answer is credited the
  median compute seconds of that probe's answers (equal work earns equally; being slow
  earns nothing extra); the measured seconds are kept beside it.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import Any, Collection, Mapping, Sequence

from loguru import logger

from protocol.chutes import HostedChute
from protocol.dendrite import Dendrite
from protocol.graval.devices import DeviceRejected, DeviceSpec, GpuModel, check_live, match_model
from protocol.graval.synapses import DeviceInfo, DeviceInfoResponse
from validator.graval.schedule import ReverifySchedule
from validator.graval.session import DeviceResult, GravalVerifier
from validator.identity import ClaimFilter, refuse_taken, taken_results
from validator.metrics import ValidatorMetrics
from store.queries import SYNTHETIC, ValidatorStore
from validator.synthetic import Probe, ProbeResult, flag_disagreements, probes_for, run_probe


def count_challenges(metrics: ValidatorMetrics | None, results: Sequence[DeviceResult]) -> None:
    if metrics is None:
        return
    for result in results:
        metrics.challenges.labels(result="pass" if result.ok else "fail", reason=result.reason).inc()


NOT_OFFERED = "not_offered"


async def verify_round(verifier: GravalVerifier, schedule: ReverifySchedule | None, store: ValidatorStore, miner: Any,
                       metrics: ValidatorMetrics | None = None, known: Collection[str] = (), *,
                       claims: ClaimFilter | None = None, expected: Collection[str] = (),
                       prove_at: float | None = None) -> list[DeviceResult]:
    """One miner's round. ``known``: its devices whose latest verification passed (re-verified at
    the lighter soundness); ``claims``: the filter the verifier's dendrite is (its refusals become
    ``uuid_taken`` results); ``expected``: the uuids it claimed this step, each of which must come
    back with a result (a sweep: one left out of the answer fails as ``not_offered``, so hiding a
    device from a sweep does not keep its last pass); ``schedule``: told how a first (solo) round
    went (None in a sweep); ``prove_at``: the sweep's instant for every Prove."""
    results = list(await verifier.verify_miner(miner, known=known, prove_at=prove_at))
    if claims is not None:
        results += taken_results(miner.hotkey, claims.refused(miner.hotkey), claims.owners)
    answered = {result.uuid for result in results}
    results += [DeviceResult(miner.hotkey, uuid, False, NOT_OFFERED, "claimed in this step's Inventory, not offered to "
                             "the sweep's challenge") for uuid in sorted(set(expected) - answered)]
    if schedule is not None:
        schedule.record(miner.hotkey, bool(results), time.time())
    if results:
        results = refuse_taken(results, await store.record_device_results(results))
    count_challenges(metrics, results)
    passed = bool(results) and all(result.ok for result in results)
    failures = sorted({r.reason for r in results if not r.ok})
    logger.info("graval: uid {} verified {}/{} devices{}", miner.uid, sum(r.ok for r in results), len(results),
                "" if passed else f" ({', '.join(failures) or 'no inventory'})")
    return results


#: A sweep gathers every miner's Inventory and readings first; all Proves then go out at
#: this many seconds after the sweep began (a miner answering later fails ``late_for_sweep``).
SWEEP_GATHER_S = 20.0


async def sweep(verifier: GravalVerifier, store: ValidatorStore, miners: Sequence[tuple[Any, Collection[str], Collection[str]]],
                metrics: ValidatorMetrics | None = None, claims: ClaimFilter | None = None,
                gather_s: float = SWEEP_GATHER_S) -> list[DeviceResult]:
    """Re-verify every device of every miner at once: ``miners`` are (neuron, known, expected)
    as ``verify_round`` takes them. All rounds start in the same event-loop turn (no cap splits
    a sweep: two claims answered by one GPU must be challenged together) and every Prove goes
    out at the same instant, ``gather_s`` after the start, whatever each miner's answering
    speed. Returns every result."""
    started = time.time()
    prove_at = time.monotonic() + gather_s
    sweep_id = await store.start_sweep(now=started, miners=len(miners))
    if metrics is not None:
        metrics.sweeps.inc()
    outcomes = await asyncio.gather(*(
        verify_round(verifier, None, store, miner, metrics, known, claims=claims, expected=expected, prove_at=prove_at)
        for miner, known, expected in miners), return_exceptions=True)
    results: list[DeviceResult] = []
    for (miner, _, _), outcome in zip(miners, outcomes):
        if isinstance(outcome, BaseException):
            logger.opt(exception=outcome).error("graval sweep: the round of uid {} failed", miner.uid)
        else:
            results.extend(outcome)
    failed = sum(not result.ok for result in results)
    await store.finish_sweep(sweep_id, now=time.time(), devices=len(results), failed=failed)
    logger.info("graval sweep: {} miners, {} devices, {} failed, {:.1f}s", len(miners), len(results), failed,
                time.time() - started)
    return results


async def device_info_check(dendrite: Dendrite, store: ValidatorStore, miner: Any,
                            claims: Sequence[DeviceSpec], table: list[GpuModel], *, allow_cpu: bool,
                            metrics: ValidatorMetrics | None = None, timeout: float = 10.0) -> list[DeviceResult]:
    """Failures found (empty when every reading matches or the miner did not answer)."""
    if not claims:
        return []
    answer = await dendrite.call(miner, DeviceInfo(uuids=sorted({c.uuid for c in claims})[:64]), timeout=timeout)
    if not answer.ok or not isinstance(answer.response, DeviceInfoResponse):
        return []  # unreachable: the next Inventory and GraVal round decide
    live = {reading.uuid: reading for reading in answer.response.devices}
    failures = []
    for claim in claims:
        reading = live.get(claim.uuid)
        try:
            if reading is None:
                failures.append(DeviceResult(miner.hotkey, claim.uuid, False, "no_device_info",
                                             "the miner gave no live reading for this device",
                                             name=claim.name, memory_bytes=claim.memory_bytes))
                continue
            check_live(claim, reading, match_model(claim, table, allow_cpu=allow_cpu))
        except DeviceRejected as rejected:
            failures.append(DeviceResult(miner.hotkey, claim.uuid, False, rejected.reason, str(rejected),
                                         name=claim.name, memory_bytes=claim.memory_bytes))
    if failures:
        await store.record_device_results(failures)  # zeroed at once; challenged again in the next sweep
        count_challenges(metrics, failures)
        logger.info("device info: uid {} failed {} device(s): {}", miner.uid, len(failures),
                    ", ".join(f"{f.uuid} {f.reason}" for f in failures))
    return failures


def credited_compute(results: Sequence[ProbeResult]) -> dict[str, float]:
    """Per probe key: the median duration of the unflagged successful answers as the validator
    measured it (request sent -> last chunk); the miners' own ``compute_s`` is never credited."""
    by_key: dict[str, list[float]] = {}
    for result in results:
        if result.ok and not result.flagged:
            by_key.setdefault(result.key, []).append(result.latency_s)
    return {key: statistics.median(values) for key, values in by_key.items()}


def _row(result: ProbeResult, credit: Mapping[str, float], now: float) -> dict[str, Any]:
    credited = credit.get(result.key, 0.0) if result.ok and not result.flagged else 0.0
    return dict(miner_hotkey=result.miner_hotkey, chute_id=result.chute_id, source=SYNTHETIC, ok=result.ok,
                error=result.error[:64], detail=result.detail[:500], key=result.key[:160], compute_s=credited,
                measured_compute_s=result.compute_s,
                prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                latency_s=result.latency_s, ttft_s=result.ttft_s, tokens_per_s=result.tokens_per_s,
                flagged=result.flagged, created_at=now)


async def synthetic_round(dendrite: Dendrite, store: ValidatorStore, miners: Sequence[Any],
                          hosted: Mapping[str, Sequence[HostedChute]], *, seed: int | None = None,
                          timeout: float = 60.0, concurrency: int = 64, max_tokens: int = 32,
                          metrics: ValidatorMetrics | None = None) -> list[ProbeResult]:
    """Probe every ready chute of every miner once; returns the results (already stored)."""
    seed = random.SystemRandom().getrandbits(32) if seed is None else seed
    gate = asyncio.Semaphore(concurrency)
    plans: dict[str, list[Probe]] = {}
    jobs: list[tuple[Any, Probe]] = []
    for miner in miners:
        for chute in hosted.get(miner.hotkey, ()):
            if chute.ready_instances <= 0:
                continue  # still starting (or crashed and restarting): no call, no blame
            if chute.chute_id not in plans:
                plans[chute.chute_id] = probes_for(chute, round_seed=seed, max_tokens=max_tokens)
            jobs.extend((miner, probe) for probe in plans[chute.chute_id])

    async def one(miner: Any, probe: Any) -> ProbeResult:
        async with gate:
            return await run_probe(dendrite, miner, miner.hotkey, probe, timeout=timeout)

    results = list(await asyncio.gather(*(one(miner, probe) for miner, probe in jobs)))
    flagged = flag_disagreements(results)
    if results:
        now, credit = time.time(), credited_compute(results)
        await store.record_invocations(_row(result, credit, now) for result in results)
    if metrics is not None:
        for result in results:
            metrics.invocations.labels(kind=result.kind, result="ok" if result.ok else result.error or "failed").inc()
            if result.ok:
                metrics.invocation_latency.labels(kind=result.kind).observe(result.latency_s)
                if result.ttft_s is not None:
                    metrics.ttft.observe(result.ttft_s)
        metrics.flagged.inc(len(flagged))
    failed = [r for r in results if not r.ok]
    logger.info("synthetic: {} calls to {} miners, {} failed, {} flagged", len(results), len({r.miner_hotkey for r in results}),
                len(failed), len(flagged))
    return results
