"""The chute registry's tables (SQLAlchemy 2 ORM): deployed chutes and their code bundles.

They live in the store the validator and the public API share (one migration history,
``store.schema``); ``store.registry`` holds the queries. One class per table:

- ``Chute``: one deployed chute ``owner/name`` (its id is ``canopy.chute.chute_id`` of
  both), its current revision, public or private, its description (cords with their
  schemas, node selector, image, concurrency: a ``canopy.chute.ChuteInfo`` as JSON) and
  how many instances it may run and for how long idle; ``deleted_at`` marks a soft delete
  (the row and its revisions stay; deploying the same name again revives the row);
- ``ChuteRevision``: every revision a chute was deployed at, keyed (chute, revision): the
  revision is the sha256 of the bundle, whose bytes are stored here (a SQLite BLOB, a
  Postgres ``bytea``), with the description of that revision.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class RegistryBase(DeclarativeBase):
    pass


class Chute(RegistryBase):
    __tablename__ = "chutes"
    __table_args__ = (UniqueConstraint("owner", "name", name="uq_chutes_owner_name"),)

    chute_id: Mapped[str] = mapped_column(String(36), primary_key=True)  # uuid5 of owner/name
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    revision: Mapped[str] = mapped_column(String(64))  # the current one: sha256 hex of its bundle
    public: Mapped[bool] = mapped_column(Boolean)  # False: only keys of the same owner may invoke it
    description: Mapped[dict[str, Any]] = mapped_column(JSON)  # the current revision's
    max_instances: Mapped[int] = mapped_column(Integer)
    shutdown_after_seconds: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)  # of this deployment (a revived name: when revived)
    updated_at: Mapped[float] = mapped_column(Float)
    deleted_at: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)


class ChuteRevision(RegistryBase):
    __tablename__ = "chute_revisions"

    chute_id: Mapped[str] = mapped_column(String(36), ForeignKey("chutes.chute_id"), primary_key=True)
    revision: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    size: Mapped[int] = mapped_column(BigInteger)  # len(bundle)
    bundle: Mapped[bytes] = mapped_column(LargeBinary)
    description: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class ChuteDemandEvent(RegistryBase):
    """A call that found no capacity for a chute (``no_capacity``) or an owner's ``warmup``:
    the demand validators announce beside the calls served (``invocations``)."""

    __tablename__ = "chute_demand"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chute_id: Mapped[str] = mapped_column(String(36), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "no_capacity" | "warmup"
    created_at: Mapped[float] = mapped_column(Float, index=True)
