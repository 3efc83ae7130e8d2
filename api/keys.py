"""API keys and credits: creation (shown once), SHA-256 storage, authentication, atomic credits.

Seam: the key store behind the gateway's authentication (``authenticate``), the ``canopy
keys`` commands and ``/admin/keys``. A key is ``cnp_`` + 43 URL-safe characters
(256 bits), so a plain SHA-256 digest is enough to store it: there is nothing to
brute-force. Only a hint (``cnp_…`` + its last four characters) is ever listed.

Credits are whole units, one per successful answer; ``None`` means unlimited. The API
reserves and refunds them through ``api.credits.CreditLedger`` (leases taken in one
conditional ``UPDATE … WHERE credits >= n``); a key's balance is its ``credits`` column
plus the leases replicas hold, which ``get``/``list``/``edit`` account for.

A key has an ``owner`` (a chute username; None: none), ``scopes`` (``invoke``, ``deploy``,
``admin``: ``store.scopes``) and ``chutes`` (an ``owner/name`` allow-list; None: every chute).
The ``admin`` flag and the ``admin`` scope are written together; a key stored with only the
flag (made before migration 0005, or by a replica of the previous version) is still ``admin``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from canopy.chute import check_chute_name, check_username
from store.api_tables import ApiKey, CreditLease
from store.scopes import ADMIN, DEFAULT_SCOPES, SCOPES, ScopeError, chute_ref, key_chutes, key_scopes, scopes_json
from node.config import parse_rate_rule

KEY_PREFIX = "cnp_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RELATIVE = re.compile(r"^\s*in\s+(\d+)\s*(second|minute|hour|day|week)s?\s*$", re.IGNORECASE)
_STRATEGY = re.compile(r"^(default|top_n:(\d{1,3})|uids:(\d{1,5}(,\d{1,5})*))$")


class KeyError_(ValueError):  # noqa: N801 - not the builtin KeyError
    """A key operation was refused; the message says why and what to do."""


class KeyRejected(Exception):
    """Authentication failed: ``reason`` is missing, unknown, disabled or expired."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RateRule:
    """At most ``limit`` requests per ``window_s`` seconds ("10/60s", "100/1h", "5/m")."""

    limit: int
    window_s: int

    @classmethod
    def parse(cls, text: str) -> "RateRule":
        parsed = parse_rate_rule(text)
        if parsed is None:
            raise KeyError_(f"rate limit {text!r} is not N/Ws (e.g. 10/60s, 100/1h, 5/m)")
        return cls(*parsed)

    def __str__(self) -> str:
        return f"{self.limit}/{self.window_s}s"


def parse_strategy(text: str) -> str:
    """``default``, ``top_n:5`` or ``uids:1,2,3``."""
    if not _STRATEGY.match(text.strip()) or text.strip() == "top_n:0":
        raise KeyError_(f"strategy {text!r} is not default, top_n:N or uids:1,2,3")
    return text.strip()


def parse_expiry(text: str, now: float | None = None) -> float:
    """"in 30 days", an ISO date or time ("2027-01-31", "2027-01-31T12:00:00Z"), or epoch seconds."""
    now = time.time() if now is None else now
    relative = _RELATIVE.match(text)
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2).lower()
        return now + timedelta(**{f"{unit}s": amount}).total_seconds()
    moment = absolute_time(text)
    if moment is None:
        raise KeyError_(f"expiry {text!r} is not 'in N days', an ISO date (2027-01-31) or epoch seconds")
    return moment


def absolute_time(text: str) -> float | None:
    """Epoch seconds, or an ISO date/time (UTC unless it says), as epoch seconds; None if neither."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hint_of(key: str) -> str:
    return f"{KEY_PREFIX}…{key[-4:]}"


@dataclass(frozen=True)
class KeyInfo:
    """A key as callers see it: never the key, only its hint."""

    id: int
    name: str
    hint: str
    credits: int | None
    expires_at: float | None
    disabled: bool
    admin: bool
    rate_limits: tuple[RateRule, ...] = ()
    default_strategy: str | None = None
    models: tuple[str, ...] | None = None
    created_at: float = 0.0
    last_used_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    #: the chute owner (username) the key acts for; None: no owner's chutes (``store.scopes``)
    owner: str | None = None
    #: ``store.scopes.SCOPES`` the key holds (``admin`` whenever the admin flag is set)
    scopes: frozenset[str] = frozenset(DEFAULT_SCOPES)
    #: the ``owner/name`` chutes the key is limited to; None: every chute
    chutes: frozenset[str] | None = None

    @classmethod
    def of(cls, row: ApiKey, leased: int = 0) -> "KeyInfo":
        """``leased``: credits gateway replicas hold for this key (``api.credits``), still its balance."""
        models = json.loads(row.models) if row.models is not None else None
        credits = row.credits + leased if row.credits is not None else None
        scopes = key_scopes(row.scopes, bool(row.admin))
        return cls(row.id, row.name, row.hint, credits, row.expires_at, row.disabled, ADMIN in scopes,
                   tuple(RateRule.parse(rule) for rule in json.loads(row.rate_limits or "[]")), row.default_strategy,
                   tuple(models) if models is not None else None, row.created_at, row.last_used_at,
                   owner=row.owner, scopes=scopes, chutes=key_chutes(row.chutes))

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "hint": self.hint, "credits": self.credits,
                "expires_at": self.expires_at, "disabled": self.disabled, "admin": self.admin,
                "rate_limits": [str(rule) for rule in self.rate_limits], "default_strategy": self.default_strategy,
                "models": list(self.models) if self.models is not None else None, "created_at": self.created_at,
                "last_used_at": self.last_used_at, "owner": self.owner,
                "scopes": [scope for scope in SCOPES if scope in self.scopes],
                "chutes": sorted(self.chutes) if self.chutes is not None else None}


def parse_owner(text: str) -> str:
    """A chute owner (a username: ``canopy.chute.check_username``)."""
    try:
        return check_username(str(text).strip(), "owner")
    except ValueError as error:
        raise KeyError_(str(error)) from None


def parse_scopes(scopes: Any) -> list[str]:
    """Scope names (``invoke``, ``deploy``, ``admin``), validated, in ``SCOPES`` order."""
    if isinstance(scopes, str):
        scopes = [scopes]
    try:
        return list(json.loads(scopes_json(scopes)))
    except ScopeError as error:
        raise KeyError_(str(error)) from None


def parse_chute_ref(text: str) -> str:
    """An allow-list entry: ``owner/name`` (a username, a chute name)."""
    owner, slash, name = str(text).strip().partition("/")
    try:
        if not slash:
            raise ValueError("no '/'")
        return chute_ref(check_username(owner), check_chute_name(name))
    except ValueError:
        raise KeyError_(f"chute {text!r} is not owner/name (e.g. alice/my-chute)") from None


def _columns(*, credits: int | None = None, expires_at: float | None = None, rate_limits: Any = None,
             default_strategy: str | None = None, models: Any = None, admin: bool | None = None,
             disabled: bool | None = None, owner: str | None = None, scopes: Any = None, chutes: Any = None,
             unset: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Validated column values for ``create``/``edit``; ``unset`` names fields to clear (None).
    ``scopes`` replaces the key's scopes; ``admin`` adds (True) or removes (False) the ``admin``
    scope; the admin flag follows the scopes (``_consistent``). ``chutes`` empty: every chute."""
    values: dict[str, Any] = {}
    if owner is not None:
        values["owner"] = parse_owner(owner)
    if scopes is not None:
        chosen = parse_scopes(scopes)
        if admin is False and ADMIN in chosen:
            raise KeyError_("admin=false contradicts the admin scope: send one or the other")
        values["scopes"] = chosen
    if chutes is not None:
        refs = sorted({parse_chute_ref(ref) for ref in ([chutes] if isinstance(chutes, str) else chutes)})
        values["chutes"] = json.dumps(refs) if refs else None
    if credits is not None:
        if credits < 0:
            raise KeyError_("credits must be >= 0")
        values["credits"] = int(credits)
    if expires_at is not None:
        values["expires_at"] = float(expires_at)
    if rate_limits is not None:
        values["rate_limits"] = json.dumps([str(RateRule.parse(str(rule))) for rule in rate_limits])
    if default_strategy is not None:
        values["default_strategy"] = parse_strategy(default_strategy)
    if models is not None:
        names = [str(model).strip() for model in models if str(model).strip()]
        values["models"] = json.dumps(sorted(set(names)))
    if admin is not None:
        values["admin"] = bool(admin)
    if disabled is not None:
        values["disabled"] = bool(disabled)
    for name in unset:
        if name not in ("credits", "expires_at", "default_strategy", "models", "owner", "chutes"):
            raise KeyError_(f"{name} cannot be cleared")
        values[name] = None
    return values


def _consistent(values: dict[str, Any], current_scopes: str | None, current_admin: bool) -> dict[str, Any]:
    """``values`` with ``scopes`` (JSON) and the ``admin`` flag agreeing, from a key whose
    columns are ``current_scopes``/``current_admin`` (a new key: None/False)."""
    if "scopes" not in values and "admin" not in values:
        return values
    chosen = set(values["scopes"]) if "scopes" in values else set(key_scopes(current_scopes, current_admin))
    if values.get("admin") is True:
        chosen.add(ADMIN)
    elif values.get("admin") is False:
        chosen.discard(ADMIN)
    return {**values, "scopes": scopes_json(chosen), "admin": ADMIN in chosen}


class KeyStore:
    """``cache_s`` > 0 keeps authenticated keys in memory that long (the API: one SELECT less
    per request); edits through this store drop the cache at once, edits elsewhere (the CLI,
    another replica) are seen within ``cache_s``. Disabled/expired are checked on every call."""

    def __init__(self, engine: AsyncEngine, *, cache_s: float = 0.0) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, KeyInfo]] = {}
        #: key id -> credits this process spent or refunded from its leases but not yet wrote
        #: to the lease rows (``api.credits.CreditLedger.unwritten``), so its own reads are exact
        self.unwritten: Any = lambda key_id: 0

    async def create_tables(self) -> None:
        from store.schema import upgrade  # the store's migrations (validator and API tables share them)

        await upgrade(self.engine)

    async def create(self, name: str, **fields: Any) -> tuple[KeyInfo, str]:
        """A new key named ``name``; returns it with the key itself (shown this once)."""
        if not _NAME.match(name):
            raise KeyError_(f"key name {name!r}: use 1-64 letters, digits, '_', '.', '-'")
        values = _consistent(_columns(**fields), None, False)
        key = new_key()
        row = ApiKey(name=name, key_hash=hash_key(key), hint=hint_of(key), created_at=time.time(),
                     **{"rate_limits": "[]", "scopes": scopes_json(DEFAULT_SCOPES), "admin": False, **values})
        try:
            async with self.sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            raise KeyError_(f"a key named {name!r} exists already (canopy keys list)") from None
        return KeyInfo.of(row), key

    async def _row(self, session: Any, name: str) -> ApiKey:
        row = (await session.scalars(select(ApiKey).where(ApiKey.name == name))).first()
        if row is None:
            raise KeyError_(f"no key named {name!r} (canopy keys list)")
        return row

    async def _leased(self, session: Any, key_id: int | None = None) -> dict[int, int]:
        """Credits held in replicas' leases, by key id (all keys, or one)."""
        query = select(CreditLease.key_id, func.sum(CreditLease.credits)).group_by(CreditLease.key_id)
        if key_id is not None:
            query = query.where(CreditLease.key_id == key_id)
        leased = {key: int(total or 0) for key, total in (await session.execute(query)).all()}
        return {key: total + self.unwritten(key) for key, total in leased.items()}

    async def get(self, name: str) -> KeyInfo:
        async with self.sessions() as session:
            row = await self._row(session, name)
            return KeyInfo.of(row, (await self._leased(session, row.id)).get(row.id, 0))

    async def list(self) -> list[KeyInfo]:
        async with self.sessions() as session:
            leased = await self._leased(session)
            return [KeyInfo.of(row, leased.get(row.id, 0))
                    for row in (await session.scalars(select(ApiKey).order_by(ApiKey.id))).all()]

    async def edit(self, name: str, **fields: Any) -> KeyInfo:
        """New values; ``credits`` sets the key's whole balance, leases included (the column
        gets what the replicas do not hold)."""
        values = _columns(**fields)
        self._cache.clear()
        async with self.sessions.begin() as session:
            row = await self._row(session, name)
            leased = (await self._leased(session, row.id)).get(row.id, 0)
            if values.get("credits") is not None:
                values["credits"] = max(0, values["credits"] - leased)
            values = _consistent(values, row.scopes, bool(row.admin))
            for column, value in values.items():
                setattr(row, column, value)
        return KeyInfo.of(row, leased)

    async def delete(self, name: str) -> None:
        self._cache.clear()
        async with self.sessions.begin() as session:
            row = await self._row(session, name)
            await session.execute(delete(CreditLease).where(CreditLease.key_id == row.id))
            await session.execute(delete(ApiKey).where(ApiKey.id == row.id))

    async def authenticate(self, key: str | None, now: float | None = None) -> KeyInfo:
        """The key's record, or ``KeyRejected`` (missing, unknown, disabled, expired)."""
        if not key:
            raise KeyRejected("missing", "no API key: send 'Authorization: Bearer cnp_...' (canopy keys create)")
        digest = hash_key(key)
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            info = cached[1]
        else:
            async with self.sessions() as session:
                row = (await session.scalars(select(ApiKey).where(ApiKey.key_hash == digest))).first()
            if row is None:
                raise KeyRejected("unknown", "the API key is not valid")
            info = KeyInfo.of(row)
            if self.cache_s > 0:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[digest] = (time.monotonic() + self.cache_s, info)
        if info.disabled:
            raise KeyRejected("disabled", f"the API key {info.hint} is disabled")
        now = time.time() if now is None else now
        if info.expires_at is not None and info.expires_at <= now:
            raise KeyRejected("expired", f"the API key {info.hint} expired")
        return info
