"""The validator's persistent state (SQLAlchemy 2, async): SQLite WAL by default, Postgres by URL.

The validator keeps everything it knows here; the public API appends its organic invocations
(``record_invocations``) to the same database. Tables are in ``store.tables``. Each write is
one transaction, so a validator killed with SIGKILL mid-step keeps everything it had
committed and loses at most the step in progress: a restart reads the scores, device
verifications and the last weights back from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Collection, Iterable, Mapping, Protocol, Sequence, cast

from sqlalchemy import CursorResult, Delete, case, delete, event, func, insert, select
from sqlalchemy.dialects.postgresql import Insert as PgInsert, insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert, insert as sqlite_insert
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from store.schema import upgrade
from store.tables import (
    ORGANIC, SYNTHETIC, Base, DeviceOwner, DeviceVerification, GravalSweep, Invocation, Miner, Score, ScoreHistory,
    WeightSubmission,
)

__all__ = ["ValidatorStore", "MinerActivity", "ChuteSums", "activity_from_sums", "DeviceVerification", "DeviceOwner",
           "GravalSweep", "Invocation", "ORGANIC", "SYNTHETIC", "UUID_TAKEN"]

#: The reason stored for a device uuid claimed by a hotkey while another hotkey owns it.
UUID_TAKEN = "uuid_taken"


class VerificationResult(Protocol):
    """A GraVal device result as the store records it (``validator.graval.session.DeviceResult``)."""

    def as_row(self) -> Mapping[str, Any]:
        """Column name -> value; keys the table lacks are left out when stored."""
        ...


@dataclass
class MinerActivity:
    """One miner's invocations over the scoring window (see ``validator.scoring``)."""

    compute_seconds: float = 0.0
    invocations_ok: int = 0
    chutes_served: int = 0
    synthetic_ok: int = 0
    synthetic_total: int = 0
    flagged: int = 0
    organic_ok: int = 0
    #: chute_id -> mean latency (time to first token where measured) of successful synthetic calls
    latency_by_chute: dict[str, float] = field(default_factory=dict)


@dataclass
class ChuteSums:
    """Sums of one miner's invocations of one chute (what ``MinerActivity`` is built from)."""

    hotkey: str
    chute_id: str
    compute_ok: float = 0.0
    n_ok: int = 0
    synthetic_ok: int = 0
    synthetic_total: int = 0
    flagged: int = 0
    organic_ok: int = 0
    latency_sum: float = 0.0  # over successful synthetic calls (time to first token where measured)

    def add(self, other: "ChuteSums", sign: int = 1) -> None:
        self.compute_ok += sign * other.compute_ok
        self.n_ok += sign * other.n_ok
        self.synthetic_ok += sign * other.synthetic_ok
        self.synthetic_total += sign * other.synthetic_total
        self.flagged += sign * other.flagged
        self.organic_ok += sign * other.organic_ok
        self.latency_sum += sign * other.latency_sum

    @property
    def empty(self) -> bool:
        return self.n_ok <= 0 and self.synthetic_total <= 0 and self.flagged <= 0


def activity_from_sums(sums: Iterable[ChuteSums]) -> dict[str, MinerActivity]:
    out: dict[str, MinerActivity] = {}
    for part in sums:
        record = out.setdefault(part.hotkey, MinerActivity())
        record.compute_seconds += max(0.0, part.compute_ok)
        record.invocations_ok += part.n_ok
        record.chutes_served += 1 if part.n_ok > 0 else 0
        record.synthetic_ok += part.synthetic_ok
        record.synthetic_total += part.synthetic_total
        record.flagged += part.flagged
        record.organic_ok += part.organic_ok
        if part.synthetic_ok > 0:
            record.latency_by_chute[part.chute_id] = part.latency_sum / part.synthetic_ok
    return out


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


async def bulk_insert(engine: AsyncEngine, table: Any, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` (dicts of column values) in one transaction: a Core executemany per set
    of keys, with the columns' defaults for the keys a row leaves out. No ORM objects: the
    API writes two rows per request this way (``api.batch``)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    if groups:
        async with engine.begin() as connection:
            for group in groups.values():
                await connection.execute(insert(table), group)


async def _deleted(session: AsyncSession, statement: Delete) -> int:
    """Run a bulk DELETE; the rows it removed (an ORM bulk DELETE's result is a ``CursorResult``)."""
    result = cast("CursorResult[Any]", await session.execute(statement))
    return result.rowcount


class ValidatorStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    async def open(cls, url: str) -> "ValidatorStore":
        """``sqlite+aiosqlite:///path.sqlite`` or ``postgresql+asyncpg://...``; tables are created if missing."""
        engine = create_async_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        await upgrade(engine)  # store.schema: the newest migration, whoever opens it first
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    def _upsert(self, table: type[Base]) -> PgInsert | SqliteInsert:
        return (pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert)(table)

    # --- miners ----------------------------------------------------------------------------

    async def upsert_miners(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert or update miners by hotkey; each row has the ``Miner`` columns it changes."""
        if not rows:
            return
        by_columns: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
        for row in rows:
            by_columns.setdefault(tuple(sorted(row)), []).append(row)
        async with self.sessions.begin() as session:
            for columns, batch in by_columns.items():  # one executemany per set of columns
                statement = self._upsert(Miner)
                changes = {key: statement.excluded[key] for key in columns if key not in ("hotkey", "first_seen_at")}
                await session.execute(statement.on_conflict_do_update(index_elements=["hotkey"], set_=changes),
                                      [dict(row) for row in batch])

    async def miners(self) -> dict[str, Miner]:
        async with self.sessions() as session:
            return {row.hotkey: row for row in (await session.scalars(select(Miner))).all()}

    # --- device verifications --------------------------------------------------------------

    async def record_device_results(self, results: Iterable[VerificationResult]) -> list[tuple[str, str, str]]:
        """``DeviceResult``s (validator.graval.session) of one or more GraVal rounds, in one transaction.

        First verified wins: a passing result claims its uuid for its hotkey when no hotkey owns
        it yet (``device_owners``); a passing result for a uuid another hotkey owns is stored as a
        ``uuid_taken`` failure instead (the owner's rows are never touched). Two rounds passing
        the same uuid at once: the first to commit owns it. Returns the refusals as (hotkey,
        uuid, owner). Columns the table lacks (a newer ``DeviceResult``) are left out.
        """
        columns = set(DeviceVerification.__table__.columns.keys())
        rows = [{key: value for key, value in result.as_row().items() if key in columns} for result in results]
        claims: dict[str, tuple[str, float]] = {}
        for row in rows:
            if row["ok"]:
                claims.setdefault(row["uuid"], (row["miner_hotkey"], row["verified_at"]))
        refused: list[tuple[str, str, str]] = []
        async with self.sessions.begin() as session:
            if claims:
                statement = self._upsert(DeviceOwner).on_conflict_do_nothing(index_elements=["uuid"])
                await session.execute(statement, [dict(uuid=uuid, hotkey=hotkey, since=at, pinned=False)
                                                  for uuid, (hotkey, at) in sorted(claims.items())])
                owners = dict((await session.execute(select(DeviceOwner.uuid, DeviceOwner.hotkey)
                                                     .where(DeviceOwner.uuid.in_(sorted(claims))))).all())
                for row in rows:
                    owner = owners.get(row["uuid"])
                    if row["ok"] and owner is not None and owner != row["miner_hotkey"]:
                        row.update(ok=False, reason=UUID_TAKEN,
                                   detail=f"{row['uuid']} is verified for another hotkey ({owner}): first verified wins")
                        refused.append((row["miner_hotkey"], row["uuid"], owner))
            session.add_all(DeviceVerification(**row) for row in rows)
        return refused

    async def latest_verifications(self, miner_hotkey: str | None = None) -> dict[tuple[str, str], DeviceVerification]:
        """The newest verification of every device, keyed (miner hotkey, uuid): another hotkey's
        claim of the same uuid never replaces a miner's own row. ``miner_hotkey``: only its rows."""
        ids = select(func.max(DeviceVerification.id).label("id"))
        if miner_hotkey is not None:
            ids = ids.where(DeviceVerification.miner_hotkey == miner_hotkey)
        newest = ids.group_by(DeviceVerification.miner_hotkey, DeviceVerification.uuid).subquery()
        query = select(DeviceVerification).join(newest, DeviceVerification.id == newest.c.id)
        async with self.sessions() as session:
            rows = (await session.scalars(query)).all()
        return {(row.miner_hotkey, row.uuid): row for row in rows}

    # --- device owners ---------------------------------------------------------------------

    async def device_owners(self, hotkey: str | None = None) -> dict[str, DeviceOwner]:
        """uuid -> its owner (``hotkey``: only that hotkey's devices)."""
        query = select(DeviceOwner)
        if hotkey is not None:
            query = query.where(DeviceOwner.hotkey == hotkey)
        async with self.sessions() as session:
            return {row.uuid: row for row in (await session.scalars(query)).all()}

    async def set_device_owner(self, uuid: str, hotkey: str, *, pinned: bool = False, now: float) -> DeviceOwner:
        """The operator's override: ``uuid`` belongs to ``hotkey`` from now on (``pinned``: even
        after that hotkey deregisters). The previous owner's claims are refused from the next round."""
        statement = self._upsert(DeviceOwner)
        statement = statement.on_conflict_do_update(index_elements=["uuid"], set_=dict(
            hotkey=statement.excluded.hotkey, since=statement.excluded.since, pinned=statement.excluded.pinned))
        async with self.sessions.begin() as session:
            await session.execute(statement, [dict(uuid=uuid, hotkey=hotkey, since=now, pinned=pinned)])
        return DeviceOwner(uuid=uuid, hotkey=hotkey, since=now, pinned=pinned)

    async def release_device(self, uuid: str) -> DeviceOwner | None:
        """Forget ``uuid``'s owner (pinned or not): the next passing verification claims it. The old owner."""
        async with self.sessions.begin() as session:
            owner = await session.get(DeviceOwner, uuid)
            if owner is not None:
                await session.delete(owner)
        return owner

    async def release_departed(self, registered: Collection[str]) -> list[DeviceOwner]:
        """Release the devices of owners no longer registered (deregistered hotkeys), except pinned ones."""
        departed = (DeviceOwner.pinned.is_(False)) & DeviceOwner.hotkey.not_in(sorted(set(registered)))
        async with self.sessions.begin() as session:
            gone = list((await session.scalars(select(DeviceOwner).where(departed))).all())
            if gone:
                await session.execute(delete(DeviceOwner).where(departed))
        return gone

    # --- sweeps ----------------------------------------------------------------------------

    async def start_sweep(self, *, now: float, miners: int) -> int:
        async with self.sessions.begin() as session:
            sweep = GravalSweep(started_at=now, miners=miners, devices=0, failed=0)
            session.add(sweep)
            await session.flush()
            return sweep.id

    async def finish_sweep(self, sweep_id: int, *, now: float, devices: int, failed: int) -> None:
        async with self.sessions.begin() as session:
            sweep = await session.get(GravalSweep, sweep_id)
            if sweep is not None:
                sweep.finished_at, sweep.devices, sweep.failed = now, devices, failed

    async def last_sweep(self) -> GravalSweep | None:
        async with self.sessions() as session:
            return (await session.scalars(select(GravalSweep).order_by(GravalSweep.id.desc()).limit(1))).first()

    async def verifications_of(self, miner_hotkey: str, limit: int = 100) -> list[DeviceVerification]:
        query = (select(DeviceVerification).where(DeviceVerification.miner_hotkey == miner_hotkey)
                 .order_by(DeviceVerification.id.desc()).limit(limit))
        async with self.sessions() as session:
            return list((await session.scalars(query)).all())

    # --- invocations -----------------------------------------------------------------------

    async def record_invocations(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append invocation rows (``Invocation`` columns; ``source`` organic or synthetic; only an
        organic row may be ``steered``)."""
        records = [dict(row) for row in rows]
        for record in records:
            if record.get("source") not in (ORGANIC, SYNTHETIC):
                raise ValueError(f"invocation source must be {ORGANIC!r} or {SYNTHETIC!r}, got {record.get('source')!r}")
            if record.get("steered") and record["source"] != ORGANIC:
                raise ValueError("only an organic invocation can be steered")
        await bulk_insert(self.engine, Invocation.__table__, records)
        return len(records)

    async def invocation_sums(self, *, since: float | None = None, before: float | None = None,
                              after_id: int | None = None, upto_id: int | None = None) -> list[ChuteSums]:
        """Per (miner, chute): sums over the invocations that match every bound given (one pass).
        A steered organic call (the caller chose the miner) counts nowhere: not in compute, not as
        a success, not towards a chute served."""
        ok = Invocation.ok.is_(True) & Invocation.steered.is_(False)
        synthetic = Invocation.source == SYNTHETIC
        latency = func.coalesce(Invocation.ttft_s, Invocation.latency_s)
        query = select(
            Invocation.miner_hotkey, Invocation.chute_id,
            func.sum(case((ok, Invocation.compute_s), else_=0.0)),
            func.sum(case((ok, 1), else_=0)),
            func.sum(case((synthetic & ok, 1), else_=0)),
            func.sum(case((synthetic, 1), else_=0)),
            func.sum(case((Invocation.flagged.is_(True), 1), else_=0)),
            func.sum(case((ok & (Invocation.source == ORGANIC), 1), else_=0)),
            func.sum(case((synthetic & ok, latency), else_=0.0)),
        ).group_by(Invocation.miner_hotkey, Invocation.chute_id)
        if since is not None:
            query = query.where(Invocation.created_at >= since)
        if before is not None:
            query = query.where(Invocation.created_at < before)
        if after_id is not None:
            query = query.where(Invocation.id > after_id)
        if upto_id is not None:
            query = query.where(Invocation.id <= upto_id)
        async with self.sessions() as session:
            rows = (await session.execute(query)).all()
        return [ChuteSums(hotkey, chute, float(compute or 0.0), int(n_ok or 0), int(syn_ok or 0), int(syn_total or 0),
                          int(flagged or 0), int(organic or 0), float(latency_sum or 0.0))
                for hotkey, chute, compute, n_ok, syn_ok, syn_total, flagged, organic, latency_sum in rows]

    async def flagged_since(self, since: float) -> set[tuple[str, str]]:
        """(miner hotkey, chute id) of the synthetic answers since ``since`` that disagreed with
        the other hosts of the same probe (``flagged``)."""
        query = (select(Invocation.miner_hotkey, Invocation.chute_id).distinct()
                 .where(Invocation.created_at >= since, Invocation.flagged.is_(True)))
        async with self.sessions() as session:
            return {(hotkey, chute) for hotkey, chute in (await session.execute(query)).all()}

    async def last_invocation_id(self) -> int:
        async with self.sessions() as session:
            return int((await session.scalar(select(func.max(Invocation.id)))) or 0)

    async def activity_since(self, since: float) -> dict[str, MinerActivity]:
        """Per miner hotkey: what its invocations since ``since`` add up to (failures count only
        in ``synthetic_total``). One full pass; the loop keeps this up to date incrementally
        with ``validator.activity.ActivityWindow``."""
        return activity_from_sums(await self.invocation_sums(since=since))

    # --- scores ----------------------------------------------------------------------------

    async def load_scores(self) -> tuple[dict[str, float], int]:
        """(hotkey -> smoothed score, the last step number) as the last finished step left them."""
        async with self.sessions() as session:
            rows = (await session.scalars(select(Score))).all()
        return {row.hotkey: row.score for row in rows}, max((row.step for row in rows), default=0)

    async def save_scores(self, step: int, block: int, scores: Mapping[str, float], raw: Mapping[str, float],
                          uids: Mapping[str, int], now: float, *, history: bool = True) -> None:
        """Replace the current scores and (``history``) append this step to the history, in one transaction."""
        async with self.sessions.begin() as session:
            await session.execute(delete(Score))
            session.add_all(Score(hotkey=hotkey, score=score, raw=raw.get(hotkey, 0.0), step=step, updated_at=now)
                            for hotkey, score in scores.items())
            if history:
                session.add_all(ScoreHistory(step=step, block=block, hotkey=hotkey, uid=uids.get(hotkey),
                                             raw=raw.get(hotkey, 0.0), score=scores.get(hotkey, 0.0), created_at=now)
                                for hotkey in sorted(set(scores) | set(raw)))

    async def score_history(self, hotkey: str, limit: int = 1000) -> list[ScoreHistory]:
        query = (select(ScoreHistory).where(ScoreHistory.hotkey == hotkey)
                 .order_by(ScoreHistory.step.desc()).limit(limit))
        async with self.sessions() as session:
            return list(reversed((await session.scalars(query)).all()))

    # --- weights ---------------------------------------------------------------------------

    async def record_weights(self, *, block: int, ok: bool, uids: Sequence[int], weights: Sequence[float],
                             version_key: int, commit_reveal: bool, message: str, now: float) -> None:
        async with self.sessions.begin() as session:
            session.add(WeightSubmission(block=block, ok=ok, uids=json.dumps(list(uids)),
                                         weights=json.dumps([round(float(w), 8) for w in weights]),
                                         version_key=version_key, commit_reveal=commit_reveal, message=message[:2000],
                                         created_at=now))

    async def last_weights(self, *, ok_only: bool = True) -> WeightSubmission | None:
        query = select(WeightSubmission).order_by(WeightSubmission.id.desc()).limit(1)
        if ok_only:
            query = query.where(WeightSubmission.ok.is_(True))
        async with self.sessions() as session:
            return (await session.scalars(query)).first()

    # --- housekeeping ----------------------------------------------------------------------

    async def prune(self, before: float) -> int:
        """Drop invocations, score history, verifications and sweeps older than ``before`` (the
        window's start), keeping the newest verification of every device (per hotkey and uuid)
        and the last sweep."""
        newest = select(func.max(DeviceVerification.id)).group_by(DeviceVerification.miner_hotkey, DeviceVerification.uuid)
        async with self.sessions.begin() as session:
            gone = await _deleted(session, delete(DeviceVerification).where(
                DeviceVerification.verified_at < before, DeviceVerification.id.not_in(newest)))
            last_sweep = select(func.max(GravalSweep.id)).scalar_subquery()
            gone += await _deleted(session, delete(GravalSweep).where(
                GravalSweep.started_at < before, GravalSweep.id != last_sweep))
            gone += await _deleted(session, delete(Invocation).where(Invocation.created_at < before))
            gone += await _deleted(session, delete(ScoreHistory).where(ScoreHistory.created_at < before))
        return int(gone or 0)
