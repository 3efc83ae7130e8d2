"""The validator's step: discover, verify, measure, score, set weights. One class, one cadence.

The validator runs a step every ``--validator.step_s``. A step:

1. reads the chain block and, every ``--validator.sync_blocks`` blocks, the metagraph
   (serving miners: axon published, no validator permit, not ourselves);
2. fans ``Inventory`` out to every miner (claimed devices, hosted chutes and their load);
3. starts the GraVal work that is due, as background tasks: a first verification at once
   for a new miner or a device never challenged for its miner (bounded by a semaphore; not
   for a miner on probation), and at random moments a sweep that re-verifies every device
   of every miner at once (never split by that bound); the device-info checks in between;
4. starts a synthetic round over every reachable miner when one is due (a task too);
5. scores: the store's window of invocations (synthetic and the API's organic ones) and
   latest verifications (per hotkey and uuid, owned devices only) become one
   ``MinerWindow`` per reachable miner, then raw scores, coldkey dedupe and the EMA
   (``validator.scoring``); the scores are saved;
6. sets weights when the tempo and rate limit allow (``validator.weights``).

``restore`` reloads the scores, the verification schedule (the last sweep, the miners
already verified) and the last weights from the store, so a validator killed with SIGKILL
resumes where its last finished step left it. Device owners are read from the store every
step (``canopy devices`` changes them from another process) and released when their hotkey
deregisters (every metagraph sync).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Coroutine

import bittensor as bt
from loguru import logger

from canopy import __spec_version__
from node.config import NeuronSettings
from chain import Chain, Metagraph, Neuron
from protocol.chutes import HostedChute
from protocol.dendrite import Dendrite
from protocol.graval.devices import DeviceSpec, GpuModel
from protocol.graval.synapses import Inventory, InventoryResponse
from store.registry import ChuteRegistry
from validator import rounds
from validator.activity import ActivityWindow
from validator.announce import MAX_WINDOW_S, Announcer, AnnounceReport
from validator.graval.schedule import ReverifySchedule
from validator.graval.session import GravalVerifier
from validator.identity import ClaimFilter
from validator.metrics import ScoreTracker, ValidatorMetrics
from validator.scoring import dedupe_coldkeys, device_multiplier, raw_scores, smooth
from store.queries import ValidatorStore
from validator.weights import WeightSetter, WeightsOutcome
from validator.windows import build_windows

PRUNE_EVERY_STEPS = 100


@dataclass
class StepReport:
    step: int
    block: int
    miners: int
    reachable: int
    verifications_started: int
    synthetic_started: bool
    scores: dict[str, float]
    raw: dict[str, float]
    weights: WeightsOutcome | None
    duration_s: float


def registry_chutes(chutes: list[HostedChute], current: dict[str, str]) -> list[HostedChute]:
    """The chutes a miner hosts at the registry's current revision (``current``: chute_id ->
    revision); a chute the registry does not hold, or at another revision, counts nowhere."""
    return [chute for chute in chutes if chute.revision and current.get(chute.chute_id) == chute.revision]


def _axon_url(neuron: Neuron) -> str:
    """Where a serving miner's axon is (``Validator.miners`` keeps serving ones only)."""
    return neuron.axon.url if neuron.axon is not None else ""


@dataclass
class MinerView:
    """What this step learned of one reachable miner."""

    neuron: Neuron
    devices: list[DeviceSpec] = field(default_factory=list)
    chutes: list[HostedChute] = field(default_factory=list)


class Validator:
    def __init__(self, *, wallet: bt.Wallet, chain: Chain, settings: NeuronSettings, store: ValidatorStore,
                 dendrite: Dendrite, table: list[GpuModel], metrics: ValidatorMetrics | None = None,
                 tracker: ScoreTracker | None = None, verifier: GravalVerifier | None = None,
                 rng: random.Random | None = None) -> None:
        self.wallet, self.chain, self.store, self.dendrite, self.table = wallet, chain, store, dendrite, table
        self.hotkey = wallet.hotkey.ss58_address
        self.netuid = settings.netuid
        self.settings = settings.validator
        self.scoring = settings.scoring
        self.allow_cpu = settings.graval.allow_cpu
        self.metrics = metrics or ValidatorMetrics()
        self.tracker = tracker
        self.rng = rng or random.SystemRandom()
        self.schedule = ReverifySchedule(interval_s=settings.graval.reverify_s, retry_s=settings.graval.retry_s, rng=self.rng)
        self.probation_s = settings.graval.probation_s
        self.sweep_gather_s = settings.graval.sweep_gather_s
        # The verifier's Inventory answers lose the uuids other hotkeys own (never challenged).
        self.claims = ClaimFilter(dendrite)
        self.verifier = verifier or GravalVerifier(self.claims, table, allow_cpu=self.allow_cpu,
                                                   is_validator=self.is_validator)
        self.activity = ActivityWindow(store, self.scoring.window_s)
        self.registry = ChuteRegistry(store.engine)
        self.announcer = Announcer(self.registry, dendrite, window_s=self.settings.demand_window_s,
                                   timeout_s=self.settings.inventory_timeout_s)
        # (chute_id, revision) -> ready instances on verified miners, as the last step saw them
        self.instances_seen: dict[tuple[str, str], int] = {}
        self.verified_miners: set[str] = set()  # hotkeys with a passing verification of a device they own
        self.weights = WeightSetter(chain, wallet, self.netuid, store, version_key=__spec_version__,
                                    retry_blocks=self.settings.weights_retry_blocks, top_n=self.settings.top_miners_logged)
        self.multiplier = device_multiplier(table)
        self.models = {model.id: model for model in table}
        self.graph: Metagraph | None = None
        self.synced_block = -(1 << 62)
        self.scores: dict[str, float] = {}
        self.step_number = 0
        self.first_seen_block: dict[str, int] = {}
        self.next_synthetic_at = 0.0
        self.next_info_check: dict[str, float] = {}
        # hotkey -> device uuids challenged for it; a key means its first GraVal round finished
        self.attempted: dict[str, set[str]] = {}
        self._verify_gate = asyncio.Semaphore(self.settings.max_concurrent_verifications)
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    # --- restart ---------------------------------------------------------------------------

    async def restore(self) -> None:
        """Scores, the verification schedule and the tempo, as the store last had them."""
        self.scores, self.step_number = await self.store.load_scores()
        newest = None
        for (hotkey, uuid), row in (await self.store.latest_verifications()).items():
            self.attempted.setdefault(hotkey, set()).add(uuid)
            newest = row.verified_at if newest is None else max(newest, row.verified_at)
        for hotkey in self.attempted:
            self.schedule.restore(hotkey)  # verified before: re-verified by the sweeps
        last = await self.store.last_sweep()
        self.schedule.restore_sweep(last.started_at if last is not None else newest, time.time())
        await self.weights.restore()
        if self.scores or self.attempted:
            logger.info("restored {} scores (step {}), {} miners' verifications, last weights at block {}",
                        len(self.scores), self.step_number, len(self.attempted), self.weights.last_set_block)

    # --- one step --------------------------------------------------------------------------

    async def sync(self, block: int) -> Metagraph:
        if self.graph is None or block - self.synced_block >= self.settings.sync_blocks:
            self.graph = await self.chain.metagraph(self.netuid)
            self.synced_block = block
            now = time.time()
            await self.store.upsert_miners([dict(hotkey=n.hotkey, uid=n.uid, coldkey=n.coldkey, axon=_axon_url(n),
                                                 first_seen_at=now, last_seen_at=now) for n in self.miners()])
            registered = {n.hotkey for n in self.graph.neurons}
            if registered:  # an empty metagraph is a bad read, not everyone deregistering
                for owner in await self.store.release_departed(registered):
                    logger.info("device {} released: its owner {} deregistered", owner.uuid, owner.hotkey)
        return self.graph

    def is_validator(self, hotkey: str) -> bool:
        """A registered validator (permit), as this validator's metagraph last had it: whose earlier
        challenge a miner may cite when it answers ``device_busy``."""
        return any(n.hotkey == hotkey and n.validator_permit for n in (self.graph.neurons if self.graph else ()))

    def miners(self) -> list[Neuron]:
        return [n for n in (self.graph.serving_miners() if self.graph else []) if n.hotkey != self.hotkey]

    def forget(self, hotkeys_left: set[str]) -> None:
        """Drop what is kept per miner for miners that left the metagraph."""
        self.schedule.forget(hotkeys_left)
        for per_miner in (self.attempted, self.first_seen_block, self.next_info_check):
            for hotkey in [key for key in per_miner if key not in hotkeys_left]:
                del per_miner[hotkey]

    async def inventory(self, miners: list[Neuron]) -> dict[str, MinerView]:
        """Every miner's Inventory. Its chutes are kept only where the registry holds the chute
        at the revision the miner runs (``registry_chutes``): no other chute gets probes or score."""
        answers = await self.dendrite.query(miners, Inventory(), timeout=self.settings.inventory_timeout_s)
        current = await self.registry.current_revisions()
        views = {}
        for miner, answer in zip(miners, answers):
            if answer.ok and isinstance(answer.response, InventoryResponse):
                chutes = registry_chutes(answer.response.chutes, current)
                views[miner.hotkey] = MinerView(miner, list(answer.response.devices), chutes)
        now = time.time()
        await self.store.upsert_miners([dict(hotkey=v.neuron.hotkey, uid=v.neuron.uid, coldkey=v.neuron.coldkey,
                                             axon=_axon_url(v.neuron), first_seen_at=now, last_seen_at=now,
                                             last_reachable_at=now, devices_claimed=len(v.devices),
                                             chutes_hosted=len(v.chutes)) for v in views.values()])
        return views

    async def announce(self) -> AnnounceReport:
        """Announce the registry to every serving miner and deliver the bundles they want."""
        if self.graph is None:
            await self.sync(await self.chain.block())
        return await self.announcer.announce(self.miners(), self.instances_seen, preferred=self.verified_miners)

    def count_instances(self, views: dict[str, MinerView], latest: dict[tuple[str, str], Any]) -> None:
        """What the announcements tell the miners: the ready instances of each chute on verified
        miners (the API routes to no other), and those miners, ranked first for new chutes."""
        owners = self.owners()
        self.verified_miners = {hotkey for (hotkey, uuid), row in latest.items() if row.ok and owners.get(uuid) == hotkey}
        seen: dict[tuple[str, str], int] = {}
        for hotkey, view in views.items():
            if hotkey in self.verified_miners:
                for chute in view.chutes:
                    seen[(chute.chute_id, chute.revision)] = seen.get((chute.chute_id, chute.revision), 0) + chute.ready_instances
        self.instances_seen = seen

    async def announce_forever(self, stop: asyncio.Event) -> None:
        """``announce`` every ``--validator.announce_s`` until ``stop`` (a failed one is logged)."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                report = await self.announce()
                if report.chutes or report.delivered:
                    logger.debug("announced {} chutes to {}/{} miners, {} bundles delivered", report.chutes,
                                 report.answered, report.miners, len(report.delivered))
            except Exception as error:  # noqa: BLE001 - the next announcement repeats everything
                logger.opt(exception=error).warning("registry announcement failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, self.settings.announce_s - (time.monotonic() - started)))

    def _start(self, name: str, job: Callable[[], Coroutine[Any, Any, Any]]) -> bool:
        if name in self._tasks:
            return False
        task = asyncio.create_task(job(), name=name)
        self._tasks[name] = task
        task.add_done_callback(lambda done: self._finished(name, done))
        return True

    def _finished(self, name: str, task: asyncio.Task) -> None:
        self._tasks.pop(name, None)
        if not task.cancelled() and task.exception() is not None:
            logger.opt(exception=task.exception()).error("validator task {} failed", name)

    async def _verify(self, miner: Neuron, known: set[str]) -> None:
        async with self._verify_gate:
            results = await rounds.verify_round(self.verifier, self.schedule, self.store, miner, self.metrics, known,
                                                claims=self.claims)
        self.attempted.setdefault(miner.hotkey, set()).update(result.uuid for result in results)

    async def _sweep(self, jobs: list[tuple[Neuron, set[str], set[str]]]) -> None:
        results = await rounds.sweep(self.verifier, self.store, jobs, self.metrics, self.claims,
                                     gather_s=self.sweep_gather_s)
        for result in results:
            self.attempted.setdefault(result.miner_hotkey, set()).add(result.uuid)

    def owners(self) -> dict[str, str]:
        """uuid -> the hotkey that owns it, as this step read the store."""
        return dict(self.claims.owners)

    def on_probation(self, latest: dict[tuple[str, str], Any], now: float) -> set[str]:
        """Miners with a failed device verification in the last ``--graval.probation_s``: their new
        devices wait for the next sweep. A solo round finds the GPU free of any other hotkey's
        proof, so a miner that lost a sweep to a shared GPU must not get one by claiming a new uuid."""
        since = now - self.probation_s
        return {hotkey for (hotkey, _), row in latest.items() if not row.ok and row.verified_at >= since}

    async def schedule_verifications(self, views: dict[str, MinerView], latest: dict[tuple[str, str], Any]) -> int:
        """Start the due sweep or first GraVal rounds, and device-info checks; returns how many miners' rounds started.

        A sweep that is due starts every reachable miner's round at once, once no first round
        is in flight (meanwhile no new one starts); ``--validator.max_concurrent_verifications``
        bounds first rounds only: cutting a sweep into batches would let one GPU answer a claim
        in each batch. A sweep's cost is the network's (the provers); the validator's part, the
        openings' checks, runs on the default thread pool, which bounds its CPU.
        """
        now = time.time()
        owners = self.owners()
        known: dict[str, set[str]] = {hotkey: set() for hotkey in views}
        for (hotkey, uuid), row in latest.items():
            if row.ok and hotkey in known and owners.get(uuid) == hotkey:
                known[hotkey].add(uuid)
        started = 0
        sweeping = "sweep" in self._tasks
        if not sweeping and self.schedule.sweep_due(now):
            solo = [name for name in self._tasks if name.startswith("verify:")]
            if not views:
                self.schedule.sweep_started(now)  # nobody to sweep: draw the next one
            elif solo:
                logger.info("graval sweep due: waits for {} first verification(s) in flight", len(solo))
            else:
                jobs = [(view.neuron, known[hotkey], {d.uuid for d in view.devices}) for hotkey, view in sorted(views.items())]
                self._start("sweep", partial(self._sweep, jobs))
                self.schedule.sweep_started(now)
                started, sweeping = len(jobs), True
        if not sweeping and not self.schedule.sweep_due(now):
            probation = self.on_probation(latest, now)
            for hotkey, view in views.items():
                if hotkey not in self.attempted or f"verify:{hotkey}" in self._tasks or hotkey in probation:
                    continue  # its first round is due anyway, one is running, or its devices wait for a sweep
                if any(d.uuid not in self.attempted.get(hotkey, ()) for d in view.devices):
                    self.schedule.expedite(hotkey)  # a device never challenged for this miner
            for hotkey in self.schedule.due(sorted(views), now):
                if hotkey in probation:
                    continue  # a retry of a round that reached nobody, now for the sweep to do
                if self._start(f"verify:{hotkey}", partial(self._verify, views[hotkey].neuron, known[hotkey])):
                    started += 1
        for hotkey, view in views.items():
            if sweeping or f"verify:{hotkey}" in self._tasks or self.next_info_check.get(hotkey, 0.0) > now:
                continue
            self.next_info_check[hotkey] = now + self.settings.device_info_interval_s * self.rng.uniform(0.5, 1.5)
            verified = [d for d in view.devices if d.uuid in known[hotkey]]
            if verified:
                self._start(f"info:{hotkey}", partial(
                    rounds.device_info_check, self.dendrite, self.store, view.neuron, verified, self.table,
                    allow_cpu=self.allow_cpu, metrics=self.metrics))
        return started

    def schedule_synthetic(self, views: dict[str, MinerView]) -> bool:
        now = time.time()
        if now < self.next_synthetic_at or not views:
            return False
        self.next_synthetic_at = now + self.settings.synthetic_interval_s * self.rng.uniform(0.5, 1.5)
        return self._start("synthetic", partial(
            rounds.synthetic_round, self.dendrite, self.store, [v.neuron for v in views.values()], {h: v.chutes for h, v in views.items()},
            seed=self.rng.getrandbits(32), timeout=self.settings.synthetic_timeout_s,
            concurrency=self.settings.max_concurrent_synthetic, max_tokens=self.settings.synthetic_max_tokens,
            metrics=self.metrics))

    async def settle(self) -> None:
        """Wait for every background round started so far (tests, the benchmark, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def score(self, views: dict[str, MinerView], block: int,
                    latest: dict[tuple[str, str], Any]) -> tuple[dict[str, float], dict[str, float]]:
        now = time.time()
        activity = await self.activity.current(now)
        miners = [view.neuron for view in views.values()]
        windows = build_windows(miners, {h: [d.uuid for d in v.devices] for h, v in views.items()}, latest, activity,
                                self.multiplier, self.owners())
        self._count_devices(windows)
        coldkeys = {n.hotkey: n.coldkey for n in (self.graph.neurons if self.graph else ())}
        raw = dedupe_coldkeys(raw_scores(windows, self.scoring), coldkeys)
        registered = set(coldkeys)
        previous = {hotkey: score for hotkey, score in self.scores.items() if hotkey in registered}
        self.scores = smooth(previous, raw, self.scoring.ema_alpha)
        self.step_number += 1
        uids = {n.hotkey: n.uid for n in (self.graph.neurons if self.graph else ())}
        history = self.step_number % self.settings.history_every_steps == 0
        await self.store.save_scores(self.step_number, block, self.scores, raw, uids, now, history=history)
        return self.scores, raw

    def _count_devices(self, windows: list) -> None:
        counts: dict[tuple[str, bool], int] = {}
        for window in windows:
            for device in window.verified():
                model = self.models.get(device.model_id)
                key = (device.model_id, bool(model is not None and model.calibrated))
                counts[key] = counts.get(key, 0) + 1
        self.metrics.verified_devices(counts)

    def warming_up(self, views: dict[str, MinerView], block: int, tempo: int) -> list[str]:
        """Before the first scores, the miners still waiting for their first GraVal round.

        Shares are relative, so scoring while some miners' first rounds are in flight would
        inflate the others' scores (and the EMA would carry that). A round in flight is always
        waited for (its own timeouts bound it); a miner first seen a tempo ago whose round has
        not even started stops holding scoring up. Empty once scores exist.
        """
        for hotkey in views:
            self.first_seen_block.setdefault(hotkey, block)
        if self.scores or self.weights.last_set_block is not None:
            return []
        return [h for h in views if h not in self.attempted
                and (f"verify:{h}" in self._tasks or block - self.first_seen_block[h] < tempo)]

    async def read_verifications(self) -> dict[tuple[str, str], Any]:
        """The latest verification per (hotkey, uuid), and the device owners (``self.claims.owners``)."""
        self.claims.owners = {uuid: owner.hotkey for uuid, owner in (await self.store.device_owners()).items()}
        return await self.store.latest_verifications()

    async def step(self, *, wait: bool = False) -> StepReport:
        """One step; ``wait`` also waits for the rounds it started before scoring."""
        started = time.perf_counter()
        block = await self.chain.block()
        graph = await self.sync(block)
        miners = self.miners()
        self.forget({m.hotkey for m in miners})
        views = await self.inventory(miners)
        latest = await self.read_verifications()
        verifications = await self.schedule_verifications(views, latest)
        synthetic = self.schedule_synthetic(views)
        if wait:
            await self.settle()
            latest = await self.read_verifications()
        self.count_instances(views, latest)
        hyper = await self.chain.hyperparameters(self.netuid)
        pending = self.warming_up(views, block, hyper.tempo)
        outcome, scores = None, self.scores
        raw: dict[str, float] = {}
        if pending:
            logger.info("scoring waits for the first GraVal round of {} miner(s)", len(pending))
        else:
            scores, raw = await self.score(views, block, latest)
            outcome = await self.weights.maybe_set(block, scores, graph, hyper)
        if raw and self.step_number % PRUNE_EVERY_STEPS == 0:
            await self.store.prune(time.time() - self.scoring.window_s)
            await self.registry.prune_demand(time.time() - MAX_WINDOW_S)  # the longest window an announcement reads
        report = StepReport(self.step_number, block, len(miners), len(views), verifications, synthetic, dict(scores), raw,
                            outcome, time.perf_counter() - started)
        self._observe(report, graph)
        return report

    def _observe(self, report: StepReport, graph: Metagraph) -> None:
        m = self.metrics
        m.steps.inc()
        m.step_seconds.observe(report.duration_s)
        m.block.set(report.block)
        m.miners.labels(state="serving").set(report.miners)
        m.miners.labels(state="reachable").set(report.reachable)
        uid_scores = {n.uid: report.scores[n.hotkey] for n in graph.neurons if n.hotkey in report.scores}
        m.scores(uid_scores)
        if report.weights is not None:
            m.weights_set.labels(result="ok" if report.weights.ok else "failed").inc()
        if self.tracker is not None:
            values = {f"score/uid_{uid}": value for uid, value in uid_scores.items()}
            values.update(block=report.block, miners=report.miners, reachable=report.reachable,
                          step_seconds=report.duration_s)
            if report.weights is not None and report.weights.ok:
                values.update({f"weight/uid_{u}": w for u, w in zip(report.weights.uids, report.weights.weights)})
            self.tracker.log(report.step, values)
        logger.info("step {} block {}: {}/{} miners reachable, {} verifications started, synthetic {}, {:.2f}s",
                    report.step, report.block, report.reachable, report.miners, report.verifications_started,
                    "started" if report.synthetic_started else "-", report.duration_s)

    async def close(self) -> None:
        await self.announcer.close()
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
        self._tasks.clear()
