"""The validator benchmark's measured process (seam: ``validator.loop.Validator`` itself, stepping
against the simulated miners over the prefilled store; its CPU and RSS are not the miners').

A devnet chain in the temp dir (the miners
registered and served at the simulator's address, the validator with stake above the
threshold), ``Validator.restore()`` from the store, then steps with ``wait=True`` (the
GraVal and synthetic rounds a step starts are awaited before scoring). The parts of a
step come from pass-through timers put around the instance's methods,
``validator.activity`` and ``validator.rounds`` (no behaviour changes).

- ``restart_step_s``: the first step after ``restore()`` (not in the median): metagraph
  sync, live device-info checks of every miner, the GraVal rounds due, a synthetic round,
  the FULL read of the scoring window (``activity_full_s``: ``ActivityWindow.current`` at
  start-up, what the hourly refresh costs too), scoring, weights. Before it the restored
  schedule is pinned to the steady state: a restore draws a fresh random delay per miner,
  so ~1/8 of the miners verified in the last hour are due at once (``due_after_restore``).
- ``step_s``: median wall time of ``await validator.step(wait=True)`` over ``--steps``
  steady-state steps. Between two steps the store gets what the API would have written
  in one ``--validator.step_s`` (the organic rows of 12 s at ``--organic-per-miner-hour``)
  and nothing is advanced by hand: the window's start moves with the clock, so the rows a
  week old leave it as the prefill laid them out. Before each step exactly the
  steady-state GraVal work is made due: ceil(miners x step_s / reverify_s) miners' rounds
  (= 1 with the defaults) and ceil(miners x step_s / device_info_interval_s) device-info
  checks (11); the periodic parts are made to happen in every measured step (an upper
  bound): a synthetic round to every miner, the metagraph sync and a weights submission
  (devnet: a SQLite write), and the last measured step is a score-history step
  (``--validator.history_every_steps``); no measured step prunes.
  ``step_cpu_s``: the process's CPU (all threads) in the step; ``step_cpu_share_of_core`` =
  that / ``--validator.step_s``. Parts: ``sync_s``, ``inventory_s`` (fan-out + the batched
  miners upsert), ``rounds_s`` (waiting for the rounds), ``verify_round_s`` (the longest
  GraVal round; the simulator proves at n = 1024 on the CPUs the validator shares),
  ``synthetic_round_s``, ``score_s`` (of which ``activity_s``: the incremental
  ``ActivityWindow.current``, over ``activity_rows_in`` new and ``activity_rows_out``
  departed rows), ``latest_verifications_s`` (both reads of the step: once, and again
  after the rounds with ``wait=True``), ``weights_s``. ``verifications_in_step``,
  ``synthetic_calls_in_step``, ``info_checks_in_step`` count the step's rows and requests;
  an honest simulated miner's failed verification or synthetic call fails the run.
  ``step_verify_cpu_s_per_device`` / ``step_verify_samples``: what the validator recorded
  for the step's rounds (n = 1024 CPU devices, already known: re-verification samples).
- ``inventory_fanout_s``: the BASELINE, a bare ``dendrite.query(miners, Inventory())`` to every
  miner (median, measured between the steps); ``step_over_fanout = step_s / inventory_fanout_s``.
- ``prune_s``: ``store.prune`` once after the steps (every 100th step runs it);
  ``rss_mb``: the process's peak RSS after the steps.
"""

from __future__ import annotations

import argparse
import math
import random
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Collection

from rich.console import Console

from bench.children import Child, run_child, write_config
from bench.report import progress
from bench.validator_prefill import OrganicTraffic
from bench.validator_sim import MIB, bench_chute, sim_stats

NETUID = 1
PART_TIMERS = (("sync_s", "sync"), ("inventory_s", "inventory"), ("rounds_s", "settle"), ("score_s", "score"),
               ("activity_s", "activity"), ("latest_verifications_s", "latest_verifications"), ("weights_s", "weights"),
               ("synthetic_round_s", "synthetic_round"))


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

    def instrument(self, validator: Any) -> None:
        """Time the step's parts in place (the instance's attributes and ``validator.rounds``)."""
        from validator import rounds

        for name in ("sync", "inventory", "settle", "score"):
            setattr(validator, name, self.wrap(name, getattr(validator, name)))
        validator.weights.maybe_set = self.wrap("weights", validator.weights.maybe_set)
        validator.activity.current = self.wrap("activity", validator.activity.current)
        store = validator.store
        store.latest_verifications = self.wrap("latest_verifications", store.latest_verifications)
        store.invocation_sums = self.wrap("invocation_sums", store.invocation_sums)
        rounds.verify_round = self.wrap("verify_round", rounds.verify_round)
        rounds.synthetic_round = self.wrap("synthetic_round", rounds.synthetic_round)


def steady_share(miners: int, step_s: float, interval_s: float) -> int:
    """Miners due per step when each is visited once per ``interval_s`` on average."""
    return min(miners, math.ceil(miners * step_s / interval_s))


def spread(hotkeys: list[str], count: int, skip: Collection[str] = ()) -> list[str]:
    """``count`` hotkeys spread evenly over the sorted list, leaving out ``skip``."""
    pool = [hotkey for hotkey in hotkeys if hotkey not in skip]
    return [pool[i * len(pool) // count] for i in range(count)] if count else []


def last_step_number(steps: int, history_every: int, prune_every: int) -> int:
    """The step number of the last measured step: a score-history step, with no pruning step
    among the restart step and the measured ones (when ``steps`` allows)."""
    for last in range(10_050, 10_050 + prune_every * history_every + 1):
        if last % history_every == 0 and all(step % prune_every for step in range(last - steps, last + 1)):
            return last
    return 10_050


def register(args: argparse.Namespace, workdir: Path, console: Console) -> tuple[Any, Any, list[str], dict, dict]:
    """The devnet chain: the subnet, the validator with stake, the miners (not yet served)."""
    from bittensor.sp_core import Keypair

    from node.wallets import coldkey_ss58, create_devnet_wallet
    from chain.devnet import DevnetLedger

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
    return ledger, wallet, hotkeys, coldkeys, {hotkey: graph.by_hotkey(hotkey).uid for hotkey in hotkeys}


class StoreProbe:
    """Read-only questions the bench asks the store between steps (never timed)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def outcome_since(self, at: float) -> dict[str, Any]:
        from sqlalchemy import func, select

        from store.queries import SYNTHETIC, DeviceVerification, Invocation

        async with self.store.sessions() as session:
            verified = dict((await session.execute(select(DeviceVerification.ok, func.count()).where(
                DeviceVerification.verified_at >= at).group_by(DeviceVerification.ok))).all())
            called = dict((await session.execute(select(Invocation.ok, func.count()).where(
                Invocation.created_at >= at, Invocation.source == SYNTHETIC).group_by(Invocation.ok))).all())
            reasons = (await session.execute(select(DeviceVerification.reason, DeviceVerification.detail).where(
                DeviceVerification.verified_at >= at, DeviceVerification.ok.is_(False)).limit(3))).all()
            errors = (await session.execute(select(Invocation.error, Invocation.detail).where(
                Invocation.created_at >= at, Invocation.ok.is_(False), Invocation.source == SYNTHETIC).limit(3))).all()
            rounds = (await session.execute(select(DeviceVerification.verify_cpu_s, DeviceVerification.samples).where(
                DeviceVerification.verified_at >= at, DeviceVerification.ok.is_(True)))).all()
        return {"verified_ok": verified.get(True, 0), "verified_failed": verified.get(False, 0),
                "synthetic_ok": called.get(True, 0), "synthetic_failed": called.get(False, 0),
                "reasons": [tuple(r) for r in reasons], "errors": [tuple(e) for e in errors],
                "verify_cpu_s": [cpu for cpu, _ in rounds], "samples": sorted({samples for _, samples in rounds})}

    async def window_moves(self, before: tuple[int, float], after: tuple[int, float]) -> tuple[int, int]:
        """(rows the incremental read added, rows it subtracted) between two (last id, start) states."""
        from sqlalchemy import func, select

        from store.queries import Invocation

        (old_id, old_start), (new_id, new_start) = before, after
        async with self.store.sessions() as session:
            added = await session.scalar(select(func.count()).where(
                Invocation.id > old_id, Invocation.id <= new_id, Invocation.created_at >= new_start))
            left = await session.scalar(select(func.count()).where(
                Invocation.created_at >= old_start, Invocation.created_at < new_start, Invocation.id <= old_id))
        return int(added or 0), int(left or 0)


def check(outcome: dict[str, Any], what: str) -> None:
    if outcome["verified_failed"] or outcome["synthetic_failed"]:
        raise RuntimeError(f"{what}: an honest simulated miner failed: {outcome['verified_failed']} device "
                           f"verification(s) {outcome['reasons']}, {outcome['synthetic_failed']} synthetic "
                           f"call(s) {outcome['errors']}")


async def measure(args: argparse.Namespace, workdir: Path, console: Console, script: Path) -> dict:
    import aiohttp

    from node.config import load_settings
    from chain.devnet import DevnetChain
    from protocol.dendrite import Dendrite
    from protocol.graval.devices import load_gpu_table
    from protocol.graval.synapses import Inventory
    from validator.loop import PRUNE_EVERY_STEPS, Validator
    from store.queries import ValidatorStore

    database = workdir / "validator.sqlite"
    url = f"sqlite+aiosqlite:///{database}"
    settings = load_settings(["--network", "devnet", "--netuid", str(NETUID), "--devnet.path", str(workdir / "devnet.sqlite"),
                              "--wallet.path", str(workdir / "wallets"), "--graval.allow_cpu", "--wandb.mode", "disabled",
                              "--database_url", url])
    step_s, reverify_s = settings.validator.step_s, settings.graval.reverify_s
    history_every = settings.validator.history_every_steps
    results: dict[str, Any] = {"miners": args.miners, "devices_per_miner": args.devices, "steps": args.steps,
                               "step_interval_s": step_s, "reverify_s": reverify_s,
                               "synthetic_interval_s": settings.validator.synthetic_interval_s,
                               "history_every_steps": history_every}

    started = time.perf_counter()
    ledger, wallet, hotkeys, coldkeys, uids = register(args, workdir, console)
    sim = Child(script, "sim", write_config(workdir / "sim.json", {"hotkeys": hotkeys, "devices": args.devices,
                                                                   "workers": args.sim_workers}))
    try:
        sim_url = f"http://127.0.0.1:{sim.hello['port']}"
        for hotkey in hotkeys:
            ledger.serve_axon(NETUID, hotkey, "127.0.0.1", sim.hello["port"])
        results["setup_s"] = time.perf_counter() - started

        # The store, as a week of running at the default schedule left it.
        due = spread(hotkeys, steady_share(args.miners, step_s, reverify_s))
        info = spread(hotkeys, steady_share(args.miners, step_s, settings.validator.device_info_interval_s), set(due))
        last_step = last_step_number(args.steps, history_every, PRUNE_EVERY_STEPS)
        started = time.perf_counter()
        console.print(f"store: prefilling {database.name} (a week of rows; "
                      f"~{args.miners * 2016 * (1 + args.organic_per_miner_hour / 12):,.0f} invocations)")
        counts = run_child(script, "prefill", write_config(workdir / "prefill.json", {
            "database_url": url, "hotkeys": hotkeys, "uids": uids, "coldkeys": coldkeys, "devices": args.devices,
            "now": time.time(), "reverify_s": reverify_s, "synthetic_interval_s": settings.validator.synthetic_interval_s,
            "window_s": settings.scoring.window_s, "beyond_window_s": PRUNE_EVERY_STEPS * step_s / 2,
            "organic_per_miner_hour": args.organic_per_miner_hour, "due": due,
            "verification_history_hours": args.verification_history_hours, "axon": sim_url,
            "step": last_step - args.steps - 1, "block": ledger.block()}))
        results["prefill_s"] = time.perf_counter() - started
        results.update(counts)
        results["database_mb"] = sum(path.stat().st_size for path in workdir.glob("validator.sqlite*")) / MIB

        store = await ValidatorStore.open(url)
        probe, timers = StoreProbe(store), Timers()
        organic = OrganicTraffic(hotkeys, args.organic_per_miner_hour, bench_chute().chute_id, random.Random(13))
        async with Dendrite(wallet) as dendrite, aiohttp.ClientSession() as http:
            validator = Validator(wallet=wallet, chain=DevnetChain(ledger.path, ledger=ledger), settings=settings,
                                  store=store, dendrite=dendrite, table=load_gpu_table(), rng=random.Random(11))
            started = time.perf_counter()
            await validator.restore()
            results["restore_s"] = time.perf_counter() - started
            now = time.time()
            results["due_after_restore"] = len(validator.schedule.due(hotkeys, now))
            # Pin the steady state. Re-verification comes in sweeps (every miner at once, once
            # per reverify_s on average): a sweep of every simulated device would take the
            # 2-core simulator an hour, so no sweep runs here and each step carries the sweeps'
            # average instead, the chosen miners' rounds (miners x step_s / reverify_s).
            validator.schedule.next_sweep_at = math.inf
            for hotkey in hotkeys:
                if hotkey in due:
                    validator.schedule.expedite(hotkey)
                else:
                    validator.schedule.record(hotkey, True, now)
            if sorted(validator.schedule.due(hotkeys, now)) != sorted(due):
                raise RuntimeError("the restored schedule does not have the prefilled miners due")
            timers.instrument(validator)

            console.print(f"validator: restart step ({len(due)} GraVal round(s) due, device-info checks of every miner, "
                          "a synthetic round, the full read of the scoring window)")
            at = time.time()
            report = await validator.step(wait=True)
            check(await probe.outcome_since(at), "restart step")
            if report.reachable != args.miners:
                raise RuntimeError(f"only {report.reachable}/{args.miners} simulated miners answered Inventory")
            if validator.activity.refreshed_at < at:
                raise RuntimeError("the restart step did not read the scoring window in full")
            results["restart_step_s"] = report.duration_s
            results["activity_full_s"] = timers.total.get("activity", 0.0)
            window = validator.activity
            results["activity_full_rows"], _ = await probe.window_moves((0, window.start), (window.last_id, window.start))

            names = ("step_s", "step_cpu_s", *(name for name, _ in PART_TIMERS), "verify_round_s")
            runs: dict[str, list[float]] = {name: [] for name in names}
            fanouts: list[float] = []
            per_step: list[dict[str, Any]] = []
            step_verify_cpu: list[float] = []
            step_samples: set[int] = set()
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
                    fed = await store.record_invocations(organic.rows(time.time() - step_s, step_s))
                    now = time.time()
                    for hotkey in due:
                        validator.schedule.expedite(hotkey)
                    for hotkey in hotkeys:
                        validator.next_info_check[hotkey] = 0.0 if hotkey in info else now + 1e6
                    validator.next_synthetic_at = 0.0
                    validator.synced_block = -(1 << 62)
                    validator.weights.last_set_block, validator.weights.next_attempt_block = None, 0
                    window = validator.activity
                    before, refreshed = (window.last_id, window.start), window.refreshed_at
                    stats = await sim_stats(http, sim_url)
                    timers.reset()
                    at, cpu = time.time(), time.process_time()
                    report = await validator.step(wait=True)
                    cpu = time.process_time() - cpu
                    after = await sim_stats(http, sim_url)
                    outcome = await probe.outcome_since(at)
                    check(outcome, f"measured step {index + 1}")
                    if window.refreshed_at != refreshed:
                        raise RuntimeError(f"measured step {index + 1} re-read the scoring window in full")
                    rows_in, rows_out = await probe.window_moves(before, (window.last_id, window.start))
                    step_verify_cpu.extend(outcome["verify_cpu_s"])
                    step_samples.update(outcome["samples"])
                    t = timers.total
                    for name, timer in PART_TIMERS:
                        runs[name].append(t.get(timer, 0.0))
                    runs["step_s"].append(report.duration_s)
                    runs["step_cpu_s"].append(cpu)
                    runs["verify_round_s"].append(timers.longest.get("verify_round", 0.0))
                    per_step.append({
                        "step": report.step, "step_s": round(report.duration_s, 3), "verify_rounds": report.verifications_started,
                        "verifications": outcome["verified_ok"], "synthetic_calls": outcome["synthetic_ok"],
                        "organic_rows_fed": fed, "activity_rows_in": rows_in, "activity_rows_out": rows_out,
                        "latest_verifications_calls": timers.calls.get("latest_verifications", 0),
                        "invocation_sums_calls": timers.calls.get("invocation_sums", 0),
                        "history": report.step % history_every == 0,
                        "weights_set": bool(report.weights and report.weights.ok),
                        "requests": {name: after.get(name, 0) - stats.get(name, 0) for name in after}})
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
            results["latest_verifications_calls_in_step"] = last["latest_verifications_calls"]
            results["organic_rows_per_step"] = statistics.median(step["organic_rows_fed"] for step in per_step)
            results["activity_rows_in"] = statistics.median(step["activity_rows_in"] for step in per_step)
            results["activity_rows_out"] = statistics.median(step["activity_rows_out"] for step in per_step)
            results["history_steps"] = sum(step["history"] for step in per_step)
            results["step_verify_cpu_s_per_device"] = statistics.mean(step_verify_cpu) if step_verify_cpu else None
            results["step_verify_samples"] = sorted(step_samples)
            results["per_step"] = per_step
            results["step_cpu_share_of_core"] = results["step_cpu_s"] / step_s
            results["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            await validator.close()
            started = time.perf_counter()  # every 100th step prunes what left the window
            results["prune_rows"] = await store.prune(time.time() - settings.scoring.window_s)
            results["prune_s"] = time.perf_counter() - started
        await store.close()
    finally:
        sim.close()
    return results
