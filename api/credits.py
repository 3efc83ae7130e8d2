"""Credits reserved in memory from leases: the gateway's per-request credit check without a write.

Seam: the gateway's credit part: the admission step reserves a credit for every charged
request and refunds it when no answer was delivered; ``api.app`` closes the ledger.
``KeyStore.reserve`` takes a credit in one conditional UPDATE, which
made every request wait for a SQLite write transaction behind the batched log writes
(``bench/api.py``: the credit UPDATE was most of the gateway's added latency). Here a
replica takes a *lease* instead: one atomic ``UPDATE … SET credits = credits - n WHERE
credits >= n`` moves ``n`` credits from the key's balance into an ``api_credit_leases`` row
that names the replica, in the same transaction; requests then reserve and refund from that
lease in memory, synchronously, with no await between the check and the decrement.

- Lease size ``n = min(lease_max, max(1, balance // lease_share))`` (256 and 8 by default): a key with plenty of
  credits costs one write per ``n`` requests; a key near empty leases one credit at a time,
  so with M credits, N > M concurrent requests still get exactly M, and the balance (the
  column plus every lease) never goes negative.
- The holder writes its unspent count to the lease row every ``heartbeat_s`` (when it
  changed, and at least every ``stale_s / 4``), gives an idle lease (``idle_s`` without a
  reservation) back to the balance, and gives everything back on ``close``.
- A replica that dies keeps its lease row; any replica gives rows older than ``stale_s``
  back to their keys (a conditional DELETE, so only one does it). Credits spent after the
  dead replica's last heartbeat are returned too: at most ``heartbeat_s`` of its spending,
  in the client's favour.
- ``KeyStore.get``/``list`` show the balance including leases; ``KeyStore.edit(credits=X)``
  sets the balance, leases included.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass
from typing import cast

from loguru import logger
from sqlalchemy import CursorResult, delete, select, update

from api.batch import BackgroundWrites
from api.keys import KeyInfo, KeyStore
from store.api_tables import ApiKey, CreditLease


@dataclass
class _Lease:
    unspent: int = 0
    written: int = 0  # the unspent count the lease row holds
    used_at: float = 0.0
    beat_at: float = 0.0


class CreditLedger:
    def __init__(self, keys: KeyStore, *, replica: str | None = None, lease_max: int = 256, lease_share: int = 8,
                 idle_s: float = 2.0, heartbeat_s: float = 1.0, stale_s: float = 60.0) -> None:
        if lease_max < 1 or lease_share < 1 or heartbeat_s <= 0 or stale_s <= heartbeat_s:
            raise ValueError("lease_max and lease_share must be >= 1 and stale_s > heartbeat_s > 0")
        self.keys, self.sessions = keys, keys.sessions
        self.replica = replica or f"gw-{secrets.token_hex(6)}"
        self.lease_max, self.lease_share = lease_max, lease_share
        self.idle_s, self.heartbeat_s, self.stale_s = idle_s, heartbeat_s, stale_s
        self._leases: dict[int, _Lease] = {}
        self._locks: dict[int, asyncio.Lock] = {}  # per key: this replica's writes for it, one at a time
        self._task: asyncio.Task | None = None
        self._writes = BackgroundWrites()  # refunds that reach the balance after their lease went back
        keys.unwritten = self.unwritten

    # --- the request path ---------------------------------------------------------------------

    async def reserve(self, key: KeyInfo) -> bool:
        """One credit for ``key`` (True), or False when its balance is empty. Keys without a
        credit limit (as authenticated, ``KeyStore.cache_s`` old at most) cost nothing."""
        if key.credits is None:
            return True
        if self._task is None:
            self.start()
        if self._take_one(self._lease_of(key.id)):
            return True
        async with self._lock(key.id):  # one lease request per key at a time; the others wait for it
            while not self._take_one(self._lease_of(key.id)):
                taken = await self._lease(key.id)
                if taken is None:  # the key became unlimited
                    return True
                if taken == 0:
                    return False
                lease = self._lease_of(key.id)
                lease.unspent += taken
                lease.written += taken
        return True

    def refund(self, key_id: int) -> None:
        """Give back a reservation whose request was not answered (synchronous: safe in ``finally``)."""
        lease = self._leases.get(key_id)
        if lease is not None:
            lease.unspent += 1
        else:  # the lease went back meanwhile: the credit goes to the balance
            self._spawn_write(key_id, 1)

    def unwritten(self, key_id: int) -> int:
        """Credits of ``key_id``'s lease spent (negative) or refunded here since its row was written."""
        lease = self._leases.get(key_id)
        return lease.unspent - lease.written if lease is not None else 0

    def _lease_of(self, key_id: int) -> _Lease:
        lease = self._leases.get(key_id)
        if lease is None:
            lease = self._leases[key_id] = _Lease()
        return lease

    def _lock(self, key_id: int) -> asyncio.Lock:
        return self._locks.setdefault(key_id, asyncio.Lock())

    def _take_one(self, lease: _Lease) -> bool:
        if lease.unspent < 1:
            return False
        lease.unspent -= 1
        lease.used_at = time.monotonic()
        return True

    async def _lease(self, key_id: int) -> int | None:
        """Move credits from the key's balance into this replica's lease row: how many (0: none
        left; None: the key has no limit)."""
        for _ in range(8):
            async with self.sessions.begin() as session:
                balance = (await session.execute(select(ApiKey.credits).where(ApiKey.id == key_id))).scalar_one_or_none()
                if balance is None:
                    return None
                if balance < 1:
                    return 0
                size = min(self.lease_max, max(1, balance // self.lease_share))
                taken = cast(CursorResult, await session.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.credits >= size)
                                              .values(credits=ApiKey.credits - size, last_used_at=time.time())))
                if not taken.rowcount:
                    continue  # another replica took some first: read the balance again
                row = (await session.scalars(select(CreditLease).where(
                    CreditLease.key_id == key_id, CreditLease.replica == self.replica))).first()
                if row is None:
                    session.add(CreditLease(key_id=key_id, replica=self.replica, credits=size, updated_at=time.time()))
                else:
                    row.credits, row.updated_at = row.credits + size, time.time()
                return size
        return 0

    # --- the background work ------------------------------------------------------------------

    def start(self) -> None:
        """Keep this replica's lease rows fresh and give back leases of replicas that stopped
        (started by the first ``reserve``)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        beats = 0
        while True:
            try:
                if beats % max(1, int(self.stale_s / 4 / self.heartbeat_s)) == 0:
                    await self.reclaim_stale()
                if beats:
                    await self.sync()
            except Exception as error:  # a locked or lost database must not stop the gateway
                logger.warning("credit leases: {}", error)
            await asyncio.sleep(self.heartbeat_s)
            beats += 1

    async def sync(self, now: float | None = None) -> None:
        """Write changed unspent counts to the lease rows and give idle leases back."""
        now = time.monotonic() if now is None else now
        for key_id in list(self._leases):
            async with self._lock(key_id):
                lease = self._leases.get(key_id)
                if lease is None:
                    continue
                if now - lease.used_at >= self.idle_s:
                    await self._give_back(key_id)
                elif lease.unspent != lease.written or now - lease.beat_at >= self.stale_s / 4:
                    await self._beat(key_id, lease, now)

    async def _beat(self, key_id: int, lease: _Lease, now: float) -> None:
        unspent = lease.unspent
        async with self.sessions.begin() as session:
            result = cast(CursorResult, await session.execute(update(CreditLease).where(
                CreditLease.key_id == key_id, CreditLease.replica == self.replica).values(
                credits=unspent, updated_at=time.time())))
        if not result.rowcount:  # another replica took the row for stale: start afresh
            logger.warning("credit lease of key {} was given back while held; taking a new one", key_id)
            self._leases.pop(key_id, None)
            return
        lease.written, lease.beat_at = unspent, now

    async def _give_back(self, key_id: int) -> None:
        """Hand this replica's lease for ``key_id`` back (the caller holds the key's lock)."""
        lease = self._leases.pop(key_id)
        async with self.sessions.begin() as session:
            gone = cast(CursorResult, await session.execute(delete(CreditLease).where(
                CreditLease.key_id == key_id, CreditLease.replica == self.replica)))
            if gone.rowcount and lease.unspent:
                await session.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.credits.is_not(None))
                                      .values(credits=ApiKey.credits + lease.unspent))

    async def reclaim_stale(self) -> int:
        """Give leases not heartbeaten for ``stale_s`` back to their keys; how many."""
        cutoff = time.time() - self.stale_s
        reclaimed = 0
        async with self.sessions() as session:
            rows = (await session.execute(select(CreditLease.id, CreditLease.key_id, CreditLease.credits)
                                          .where(CreditLease.updated_at < cutoff))).all()
        for lease_id, key_id, credits in rows:
            async with self.sessions.begin() as session:
                gone = cast(CursorResult, await session.execute(delete(CreditLease).where(
                    CreditLease.id == lease_id, CreditLease.updated_at < cutoff)))
                if gone.rowcount:
                    reclaimed += 1
                    await session.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.credits.is_not(None))
                                          .values(credits=ApiKey.credits + credits))
        if reclaimed:
            logger.info("gave {} credit lease(s) of stopped gateway replicas back to their keys", reclaimed)
        return reclaimed

    def _spawn_write(self, key_id: int, amount: int) -> None:
        async def write() -> None:
            try:
                async with self.sessions.begin() as session:
                    await session.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.credits.is_not(None))
                                          .values(credits=ApiKey.credits + amount))
            except Exception as error:  # the answer is sent already; say what was not given back
                logger.warning("could not refund {} credit(s) to key {}: {}", amount, key_id, error)
        self._writes.spawn(write())

    async def close(self) -> None:
        """Stop the heartbeat and give every lease back."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._writes.drain()
        for key_id in list(self._leases):
            async with self._lock(key_id):
                if key_id in self._leases:
                    await self._give_back(key_id)
