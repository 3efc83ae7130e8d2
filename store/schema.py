"""The store's schema: every table's metadata and the Alembic upgrade each store opens through.

Every store brings its database to the newest revision before using it (``upgrade``);
developers add a migration with ``python -m store.schema revision "what changed"``. The
validator's tables (``store.tables``), the API's (``store.api_tables``) and the chute
registry's (``store.registry_tables``) share one database, so they share one migration
history, in ``store/migrations/versions``.

A database made before migrations existed (``create_all``; no ``alembic_version``) runs
every revision from the baseline, which creates only the tables it lacks (a validator-only
database gains the API's), so a new version keeps its keys, logs and scores. Two processes
opening a new database at once (the validator and the API, or two replicas) race on the
same DDL: the loser's transaction fails ("already exists", SQLite's "database is locked", a
duplicate Postgres catalog row) and is retried, finding the work done.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import weakref
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

MIGRATIONS = Path(__file__).with_name("migrations")
# What another process creating the same tables at once looks like. ``upgrade`` takes the
# database's lock first (``_exclusive``), so these remain for a replica of an older version,
# which upgrades without it, racing a new one during a rolling restart.
_CREATING_ELSEWHERE = ("already exists", "database is locked", "UNIQUE constraint failed: alembic_version",
                       "alembic_version_pkc", "pg_type_typname_nsp_index", "pg_class_relname_nsp_index")
#: ``pg_advisory_xact_lock`` key of the store's migrations (any constant shared by every replica).
_PG_MIGRATION_LOCK = 0x63616E6F7079  # "canopy"


@lru_cache(maxsize=1)
def metadata() -> sa.MetaData:
    """Every table of the store (the validator's, the API's, the chute registry's) in one ``MetaData``."""
    from store.api_tables import ApiBase
    from store.registry_tables import RegistryBase
    from store.tables import Base

    combined = sa.MetaData()
    for source in (Base.metadata, ApiBase.metadata, RegistryBase.metadata):
        for table in source.tables.values():
            table.to_metadata(combined)
    return combined


def _config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade_sync(connection: sa.Connection, revision: str = "head") -> None:
    """Bring the database on ``connection`` to ``revision``."""
    command.upgrade(_config(connection), revision)


def current_revision(connection: sa.Connection) -> str | None:
    if "alembic_version" not in sa.inspect(connection).get_table_names():
        return None
    return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


_LOCKS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]" = weakref.WeakKeyDictionary()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """``upgrade_sync`` on ``engine``, waiting out another process doing the same at once.
    Within a process one upgrade runs at a time: Alembic's ``op``/``context`` are module globals."""
    lock = _LOCKS.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    for attempt in range(10):
        try:
            async with lock, engine.begin() as connection:
                await _exclusive(connection)
                await connection.run_sync(upgrade_sync, revision)
            return
        except (OperationalError, ProgrammingError, IntegrityError) as error:
            if not any(text in str(error) for text in _CREATING_ELSEWHERE) or attempt == 9:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))


async def _exclusive(connection: AsyncConnection) -> None:
    """Make the upgrade one transaction that other processes wait for, so the second one to
    open a new database finds it at head instead of running the same migrations again
    (the validator and a reader opening one fresh SQLite file once left two version rows).
    SQLite: ``BEGIN IMMEDIATE`` takes the write lock up front (``busy_timeout`` waits for
    it) and its DDL is transactional once a transaction is open; Postgres: a transaction
    advisory lock, released at commit."""
    if connection.dialect.name == "sqlite":
        await connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql":
        await connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})


def new_revision(message: str) -> None:
    """Autogenerate a migration from the difference between the newest revision and the tables."""
    with tempfile.TemporaryDirectory() as folder:
        engine = sa.create_engine(f"sqlite:///{folder}/head.sqlite")
        with engine.begin() as connection:
            upgrade_sync(connection)
            command.revision(_config(connection), message=message, autogenerate=True)
        engine.dispose()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "revision":
        sys.exit('usage: python -m store.schema revision "what changed"')
    new_revision(sys.argv[2])
