"""The validator's persistent state (SQLAlchemy 2, async): SQLite WAL by default, Postgres by URL.

Called by the validator loop and the GraVal round. Today it holds every device
verification (pass or fail, reason, achieved throughput, timing) so that scoring can
count a device only while its latest verification passed; later tables (scores,
invocations, weight submissions) join it here. Each write is one transaction, so a
validator killed mid-step keeps whatever it had committed.
"""

from __future__ import annotations

from typing import Iterable

from sqlalchemy import Boolean, Float, Integer, String, Text, event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from validator.graval.session import DeviceResult


class Base(DeclarativeBase):
    pass


class DeviceVerification(Base):
    __tablename__ = "device_verifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    miner_hotkey: Mapped[str] = mapped_column(String(64), index=True)
    uuid: Mapped[str] = mapped_column(String(128), index=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")
    model_id: Mapped[str] = mapped_column(String(32), default="")
    name: Mapped[str] = mapped_column(String(128), default="")
    memory_bytes: Mapped[int] = mapped_column(Integer, default=0)
    elapsed_s: Mapped[float] = mapped_column(Float, default=0.0)
    expected_s: Mapped[float] = mapped_column(Float, default=0.0)
    throughput_macs_s: Mapped[float] = mapped_column(Float, default=0.0)
    samples: Mapped[int] = mapped_column(Integer, default=0)
    verified_at: Mapped[float] = mapped_column(Float, index=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API connection
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


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
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    async def record_device_results(self, results: Iterable[DeviceResult]) -> None:
        async with self.sessions.begin() as session:
            session.add_all(DeviceVerification(**result.as_row()) for result in results)

    async def latest_verifications(self) -> dict[str, DeviceVerification]:
        """The newest verification of every device uuid."""
        newest = (select(DeviceVerification.uuid, func.max(DeviceVerification.id).label("id"))
                  .group_by(DeviceVerification.uuid).subquery())
        query = select(DeviceVerification).join(newest, DeviceVerification.id == newest.c.id)
        async with self.sessions() as session:
            rows = (await session.scalars(query)).all()
        return {row.uuid: row for row in rows}

    async def verifications_of(self, miner_hotkey: str, limit: int = 100) -> list[DeviceVerification]:
        query = (select(DeviceVerification).where(DeviceVerification.miner_hotkey == miner_hotkey)
                 .order_by(DeviceVerification.id.desc()).limit(limit))
        async with self.sessions() as session:
            return list((await session.scalars(query)).all())
