"""The chute registry: deployed chutes, their revisions and code bundles (async, over an ``AsyncEngine``).

Seam: the store behind ``canopy deploy`` as the API serves it (``put_revision``, ``get``,
``list``, ``delete``), the bundles miners fetch (``bundle``) and what validators announce
(``current_revisions``), in the database the validator and the API share (tables in
``store.registry_tables``, one migration history with the rest: ``store.schema``). Out come
``ChuteRecord``s, never ORM rows. Who may call these is ``store.scopes``' decision.

A chute is ``owner/name``; its id is ``canopy.chute.chute_id(owner, name)``, the id the SDK
gives the same chute (what miners and validators already key it by), so a deployed chute and
its running code agree. Redeploying a name adds a revision (the sha256 of its bundle) and
makes it current; the old revisions stay fetchable. Deleting is soft: the chute stops being
listed and announced, its bundles stay, and deploying the name again revives it.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, delete, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from canopy.chute import check_chute_name, check_username, chute_id
from store.registry_tables import Chute, ChuteDemandEvent, ChuteRevision
from store.tables import ORGANIC, Invocation

__all__ = ["DEMAND_KINDS", "ChuteRecord", "ChuteRegistry", "Demand", "RegistryError", "RevisionRecord", "chute_id"]

_REVISION = re.compile(r"^[0-9a-f]{64}$")
_ATTEMPTS = 8
#: What ``record_demand`` accepts: a call that found no capacity, an owner's warmup.
DEMAND_KINDS = ("no_capacity", "warmup")


class RegistryError(ValueError):
    """A registry write was refused (owner, name, revision, bundle or a setting); nothing was stored."""


@dataclass(frozen=True)
class ChuteRecord:
    """A deployed chute as the registry returns it."""

    chute_id: str
    owner: str
    name: str
    revision: str  # the current one
    public: bool
    description: dict[str, Any]  # of the current revision (a ChuteInfo as JSON: cords, node selector, image, ...)
    max_instances: int
    shutdown_after_seconds: int
    created_at: float
    updated_at: float

    @property
    def ref(self) -> str:
        """``owner/name``."""
        return f"{self.owner}/{self.name}"

    @classmethod
    def of(cls, row: Chute) -> "ChuteRecord":
        return cls(row.chute_id, row.owner, row.name, row.revision, row.public, dict(row.description),
                   row.max_instances, row.shutdown_after_seconds, row.created_at, row.updated_at)


@dataclass(frozen=True)
class Demand:
    """What a chute's users asked for since some moment: organic calls served (``invocations``),
    calls that found no capacity, warmups."""

    calls: int = 0
    refused: int = 0
    warmups: int = 0
    last_at: float | None = None  # the latest of them


@dataclass(frozen=True)
class RevisionRecord:
    """One revision of a chute (its bundle is ``ChuteRegistry.bundle(revision)``)."""

    chute_id: str
    revision: str
    size: int
    description: dict[str, Any]
    created_at: float


def _checked(owner: str, name: str, revision: str, bundle: bytes, description: Mapping[str, Any], public: bool,
             max_instances: int, shutdown_after_seconds: int) -> dict[str, Any]:
    """``put_revision``'s arguments validated; the description as plain JSON values."""
    try:
        check_username(owner, "chute owner")
        check_chute_name(name)
    except ValueError as error:
        raise RegistryError(str(error)) from None
    if not isinstance(bundle, bytes) or not bundle:
        raise RegistryError(f"chute {owner}/{name}: the bundle must be non-empty bytes")
    if not isinstance(revision, str) or not _REVISION.match(revision):
        raise RegistryError(f"chute {owner}/{name}: revision {revision!r} is not a sha256 hex digest (64 of 0-9a-f)")
    digest = hashlib.sha256(bundle).hexdigest()
    if digest != revision:
        raise RegistryError(f"chute {owner}/{name}: revision {revision} is not the sha256 of the bundle "
                            f"({digest}); the upload was corrupted or mislabelled")
    if not isinstance(public, bool):
        raise RegistryError(f"chute {owner}/{name}: public must be true or false, got {public!r}")
    for setting, value, least in (("max_instances", max_instances, 1), ("shutdown_after_seconds", shutdown_after_seconds, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least or value >= 2**31:
            raise RegistryError(f"chute {owner}/{name}: {setting} must be an integer >= {least}, got {value!r}")
    if not isinstance(description, Mapping):
        raise RegistryError(f"chute {owner}/{name}: the description must be a JSON object")
    try:
        plain = json.loads(json.dumps(dict(description), allow_nan=False))
    except (TypeError, ValueError) as error:
        raise RegistryError(f"chute {owner}/{name}: the description is not JSON: {error}") from None
    return dict(chute_id=chute_id(owner, name), owner=owner, name=name, revision=revision, public=public,
                description=plain, max_instances=max_instances, shutdown_after_seconds=shutdown_after_seconds)


class ChuteRegistry:
    """The registry on ``engine`` (brought to the newest revision by whoever opened it:
    ``store.schema.upgrade``)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def put_revision(self, owner: str, name: str, revision: str, bundle: bytes, description: Mapping[str, Any],
                           *, public: bool, max_instances: int, shutdown_after_seconds: int,
                           now: float | None = None) -> ChuteRecord:
        """Deploy ``bundle`` (whose sha256 is ``revision``) as ``owner/name``: create the chute
        (or revive a deleted one), or add the revision to it, and make it current with these
        settings. Uploading a revision the chute already has stores no second copy (the same
        call twice changes nothing; an older revision becomes current again). Invalid input
        raises ``RegistryError`` and stores nothing. Two deploys of one chute at once both
        land (the one that lost the race is retried); the last to commit is current."""
        values = _checked(owner, name, revision, bundle, description, public, max_instances, shutdown_after_seconds)
        now = time.time() if now is None else now
        for attempt in range(_ATTEMPTS):
            try:
                return await self._put(values, bundle, now)
            except (IntegrityError, OperationalError) as error:
                # another deploy inserted the same chute or revision first (Postgres, SQLite), or
                # wrote between this one's read and write (SQLite: "database is locked")
                if attempt == _ATTEMPTS - 1 or (isinstance(error, OperationalError) and "locked" not in str(error)):
                    raise
                await asyncio.sleep(0.02 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _put(self, values: dict[str, Any], bundle: bytes, now: float) -> ChuteRecord:
        async with self.sessions.begin() as session:
            row = await session.get(Chute, values["chute_id"], with_for_update=True)
            if row is None:
                row = Chute(**values, created_at=now, updated_at=now, deleted_at=None)
                session.add(row)
                await session.flush()  # the chute before its revision (the foreign key)
            else:
                changed = row.deleted_at is not None
                if changed:  # a deleted name deployed again: a new deployment of the same id
                    row.deleted_at, row.created_at = None, now
                for column, value in values.items():
                    if getattr(row, column) != value:
                        setattr(row, column, value)
                        changed = True
                if changed:
                    row.updated_at = now
            stored = await session.scalar(select(ChuteRevision.revision).where(
                ChuteRevision.chute_id == values["chute_id"], ChuteRevision.revision == values["revision"]))
            if stored is None:
                session.add(ChuteRevision(chute_id=values["chute_id"], revision=values["revision"], size=len(bundle),
                                          bundle=bundle, description=values["description"], created_at=now))
            return ChuteRecord.of(row)

    async def get(self, owner: str, name: str) -> ChuteRecord | None:
        """Chute ``owner/name``, None if it was never deployed or is deleted."""
        return await self.get_by_id(chute_id(owner, name))

    async def get_by_id(self, chute_id: str) -> ChuteRecord | None:
        async with self.sessions() as session:
            row = await session.get(Chute, chute_id)
        return ChuteRecord.of(row) if row is not None and row.deleted_at is None else None

    async def list(self, owner: str | None = None, include_private_of: str | None = None) -> builtins.list[ChuteRecord]:
        """The chutes not deleted, by owner and name: the public ones, and the private ones of
        ``include_private_of`` (the caller's own); ``owner``: only that owner's."""
        visible: ColumnElement[bool] = Chute.public.is_(True)
        if include_private_of is not None:
            visible = visible | (Chute.owner == include_private_of)
        query = select(Chute).where(Chute.deleted_at.is_(None), visible).order_by(Chute.owner, Chute.name)
        if owner is not None:
            query = query.where(Chute.owner == owner)
        async with self.sessions() as session:
            return [ChuteRecord.of(row) for row in (await session.scalars(query)).all()]

    async def delete(self, owner: str, name: str, now: float | None = None) -> bool:
        """Soft-delete ``owner/name`` (no longer listed, fetched by ``get`` or announced; its
        bundles stay). False if there was no such chute, or it was deleted already."""
        now = time.time() if now is None else now
        statement = (update(Chute).where(Chute.chute_id == chute_id(owner, name), Chute.deleted_at.is_(None))
                     .values(deleted_at=now, updated_at=now))
        async with self.sessions.begin() as session:
            result = cast("CursorResult[Any]", await session.execute(statement))
            return bool(result.rowcount)

    async def revisions(self, owner: str, name: str) -> builtins.list[RevisionRecord]:
        """Every revision ``owner/name`` was deployed at (deleted or not), newest first."""
        query = (select(ChuteRevision.chute_id, ChuteRevision.revision, ChuteRevision.size, ChuteRevision.description,
                        ChuteRevision.created_at)
                 .where(ChuteRevision.chute_id == chute_id(owner, name))
                 .order_by(ChuteRevision.created_at.desc(), ChuteRevision.revision))
        async with self.sessions() as session:
            rows = (await session.execute(query)).all()
        return [RevisionRecord(cid, revision, size, dict(description), created_at)
                for cid, revision, size, description, created_at in rows]

    async def bundle(self, revision: str) -> bytes | None:
        """The bundle whose sha256 is ``revision`` (of any chute, deleted ones too: a miner may
        still be fetching it), None if none was uploaded."""
        if not isinstance(revision, str) or not _REVISION.match(revision):
            return None
        async with self.sessions() as session:
            return await session.scalar(select(ChuteRevision.bundle).where(ChuteRevision.revision == revision).limit(1))

    async def current_revisions(self) -> dict[str, str]:
        """chute_id -> current revision of every chute not deleted, public or private (what
        validators announce for miners to host)."""
        async with self.sessions() as session:
            rows = (await session.execute(select(Chute.chute_id, Chute.revision).where(Chute.deleted_at.is_(None)))).all()
        return {cid: revision for cid, revision in rows}

    async def list_all(self) -> builtins.list[ChuteRecord]:
        """Every chute not deleted, public or private (what validators announce), by id."""
        query = select(Chute).where(Chute.deleted_at.is_(None)).order_by(Chute.chute_id)
        async with self.sessions() as session:
            return [ChuteRecord.of(row) for row in (await session.scalars(query)).all()]

    # --- demand --------------------------------------------------------------------------

    async def record_demand(self, chute_id: str, kind: str, now: float | None = None) -> None:
        """One ``kind`` event (``DEMAND_KINDS``) for ``chute_id``."""
        if kind not in DEMAND_KINDS:
            raise RegistryError(f"demand kind {kind!r} is not one of {', '.join(DEMAND_KINDS)}")
        async with self.sessions.begin() as session:
            session.add(ChuteDemandEvent(chute_id=chute_id, kind=kind, created_at=time.time() if now is None else now))

    async def demand_since(self, since: float) -> dict[str, Demand]:
        """chute_id -> its users' demand since ``since``: organic calls (the validators' synthetic
        probes are measurement, not demand), calls that found no capacity, warm-ups (chutes
        with none are absent)."""
        calls = (select(Invocation.chute_id, func.count(), func.max(Invocation.created_at))
                 .where(Invocation.created_at >= since, Invocation.source == ORGANIC).group_by(Invocation.chute_id))
        events = (select(ChuteDemandEvent.chute_id, ChuteDemandEvent.kind, func.count(), func.max(ChuteDemandEvent.created_at))
                  .where(ChuteDemandEvent.created_at >= since).group_by(ChuteDemandEvent.chute_id, ChuteDemandEvent.kind))
        counts: dict[str, dict[str, Any]] = {}
        async with self.sessions() as session:
            rows = [(cid, "calls", count, last) for cid, count, last in (await session.execute(calls)).all()]
            rows += [(cid, "refused" if kind == "no_capacity" else "warmups", count, last)
                     for cid, kind, count, last in (await session.execute(events)).all()]
        for cid, field, count, last in rows:
            values = counts.setdefault(cid, {})
            values[field] = int(count)
            values["last_at"] = max(float(last), values.get("last_at") or float(last))
        return {cid: Demand(**values) for cid, values in counts.items()}

    async def prune_demand(self, before: float) -> int:
        """Drop demand events older than ``before``; how many went."""
        async with self.sessions.begin() as session:
            result = cast("CursorResult[Any]", await session.execute(
                delete(ChuteDemandEvent).where(ChuteDemandEvent.created_at < before)))
            return int(result.rowcount or 0)
