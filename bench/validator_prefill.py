"""The validator benchmark's store (seam: what a week of running left in the database, and
what the public API keeps appending while the validator steps).

A child of the validator benchmark (``--role prefill --config FILE``): a temporary
SQLite store filled like a validator that has run a week at the default schedule, in
time order (ids grow with time, as a validator appends):

- synthetic invocations: every miner probed every ``--validator.synthetic_interval_s``
  (300 s: miners x ~2016 rows, 1% failed);
- organic invocations (the API's): ``--organic-per-miner-hour`` per miner and hour;
- the invocations start ``beyond_window_s`` before the scoring window (half of what the
  validator's prune every ``PRUNE_EVERY_STEPS`` steps leaves behind), so rows keep
  leaving the window while the validator steps, at the rate they arrived a week before;
- an hourly GraVal history of every device over ``--verification-history-hours`` (default
  the whole week; the latest within the last hour at spread times, except the miners due
  in the measured steps, older than 1.5 x reverify_s), and every device's owner (its
  hotkey, ``validator.identity``), as the first passing verifications left them;
- the miners and the current scores. The score history is not prefilled: no step reads
  it, and the validator appends to it only every ``--validator.history_every_steps``.

Bulk inserts run through the store's engine (plain executemany; the ORM's per-row work
would triple the time). ``OrganicTraffic`` is also what the measured run uses between
its steps: the organic rows of one ``--validator.step_s`` at the configured rate, written
with ``ValidatorStore.record_invocations`` as the API writes them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from bench.report import progress
from bench.validator_sim import INVOKE_COMPUTE_S, bench_chute, miner_devices

INVOCATION_COLUMNS = ("miner_hotkey", "chute_id", "source", "ok", "error", "detail", "key", "compute_s",
                      "measured_compute_s", "prompt_tokens", "completion_tokens", "latency_s", "ttft_s",
                      "tokens_per_s", "flagged", "created_at")
VERIFICATION_COLUMNS = ("miner_hotkey", "uuid", "ok", "reason", "detail", "model_id", "name", "memory_bytes",
                        "elapsed_s", "expected_s", "throughput_macs_s", "samples", "verify_cpu_s", "verified_at")
BATCH = 20_000


class OrganicTraffic:
    """The API's organic invocations: ``per_miner_hour`` per miner, at random miners and times."""

    def __init__(self, hotkeys: Sequence[str], per_miner_hour: float, chute_id: str, rng: random.Random) -> None:
        self.hotkeys, self.chute_id, self.rng = list(hotkeys), chute_id, rng
        self.per_second = per_miner_hour * len(self.hotkeys) / 3600.0
        self.carry = 0.0  # the fraction of a row owed to the next span

    def rows(self, start: float, seconds: float) -> list[dict[str, Any]]:
        """The rows of ``[start, start + seconds)`` (``Invocation`` columns)."""
        from store.queries import ORGANIC

        self.carry += self.per_second * seconds
        count = int(self.carry)
        self.carry -= count
        rows = []
        for _ in range(count):
            compute = self.rng.uniform(0.2, 8.0)
            rows.append(dict(miner_hotkey=self.rng.choice(self.hotkeys), chute_id=self.chute_id, source=ORGANIC, ok=True,
                             error="", detail="", key="", compute_s=compute, measured_compute_s=compute,
                             prompt_tokens=self.rng.randrange(20, 2000), completion_tokens=self.rng.randrange(1, 800),
                             latency_s=compute + self.rng.uniform(0.01, 0.2), ttft_s=self.rng.uniform(0.05, 0.5),
                             tokens_per_s=self.rng.uniform(20, 200), flagged=False,
                             created_at=start + self.rng.uniform(0, seconds)))
        return rows


def synthetic_row(rng: random.Random, hotkey: str, chute_id: str, key: str, at: float) -> dict[str, Any]:
    """One probe's row as ``validator.rounds`` writes it (1% time out)."""
    from store.queries import SYNTHETIC

    row = dict(miner_hotkey=hotkey, chute_id=chute_id, source=SYNTHETIC, ok=True, error="", detail="", key=key,
               compute_s=INVOKE_COMPUTE_S, measured_compute_s=INVOKE_COMPUTE_S, prompt_tokens=0, completion_tokens=0,
               latency_s=rng.uniform(0.03, 0.25), ttft_s=None, tokens_per_s=None, flagged=False,
               created_at=at + rng.uniform(0, 5))
    if rng.random() < 0.01:
        row.update(ok=False, error="timeout", detail="no complete reply within 60s", compute_s=0.0,
                   measured_compute_s=None, latency_s=60.0)
    return row


async def prefill(config_path: str) -> None:
    """A week of a validator's rows, in time order; prints the row counts as one JSON line."""
    from protocol.graval.spec import samples_needed
    from validator.graval.session import REVERIFY_FAILURE
    from store.queries import ValidatorStore
    from store.tables import DeviceOwner, DeviceVerification, Invocation

    config = json.loads(Path(config_path).read_text())
    hotkeys: list[str] = config["hotkeys"]
    uids: dict[str, int] = config["uids"]
    now, reverify_s, interval = config["now"], config["reverify_s"], config["synthetic_interval_s"]
    window = config["window_s"]
    due = set(config["due"])
    rng = random.Random(7)
    chute = bench_chute()
    cord = chute.cords[0]
    key = f"{chute.chute_id}:{cord.method}:{cord.path}:"
    organic = OrganicTraffic(hotkeys, config["organic_per_miner_hour"], chute.chute_id, rng)
    console = Console(stderr=True)
    store = await ValidatorStore.open(config["database_url"])
    counts = {"synthetic_rows": 0, "organic_rows": 0, "verification_rows": 0}

    async def insert(table: Any, columns: Sequence[str], rows: list[tuple]) -> None:
        if rows:
            sql = f"INSERT INTO {table.__tablename__} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            async with store.engine.begin() as connection:
                await connection.exec_driver_sql(sql, rows)

    start = now - window - config["beyond_window_s"]
    rounds = int((now - start) // interval)
    chunk: list[tuple] = []
    with progress(console) as bar:
        task = bar.add_task(f"store: a week of invocations ({rounds} synthetic rounds)", total=rounds)
        for index in range(rounds):
            at = start + index * interval
            rows = [synthetic_row(rng, hotkey, chute.chute_id, key + f"{index:016x}", at) for hotkey in hotkeys]
            traffic = organic.rows(at, interval)
            counts["synthetic_rows"] += len(rows)
            counts["organic_rows"] += len(traffic)
            chunk.extend(tuple(row[column] for column in INVOCATION_COLUMNS) for row in rows + traffic)
            if len(chunk) >= BATCH:
                await insert(Invocation, INVOCATION_COLUMNS, chunk)
                chunk.clear()
            bar.update(task, advance=1)
        await insert(Invocation, INVOCATION_COLUMNS, chunk)

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
        for offset in range(0, len(rows), BATCH):
            await insert(DeviceVerification, VERIFICATION_COLUMNS, rows[offset:offset + BATCH])
            bar.update(task, advance=min(BATCH, len(rows) - offset))
        counts["verification_rows"] = len(rows)
        # Each device belongs to the hotkey that first passed with it (validator.identity): the
        # validator re-checks only owned devices live (device-info) and samples them as known.
        owners = [(device.uuid, hotkey, now - hours * reverify_s, False) for hotkey in hotkeys for device in devices[hotkey]]
        await insert(DeviceOwner, ("uuid", "hotkey", "since", "pinned"), owners)
        counts["device_owner_rows"] = len(owners)

    await store.upsert_miners([dict(hotkey=hotkey, uid=uids[hotkey], coldkey=config["coldkeys"][hotkey],
                                    axon=config["axon"], first_seen_at=now - window, last_seen_at=now - 12.0,
                                    last_reachable_at=now - 12.0, devices_claimed=config["devices"], chutes_hosted=1)
                               for hotkey in hotkeys])
    scores = {hotkey: (1.0 + 0.2 * rng.random()) / len(hotkeys) for hotkey in hotkeys}
    await store.save_scores(config["step"], config["block"], scores, scores, uids, now - 12.0, history=False)
    await store.close()
    print(json.dumps(counts), flush=True)
