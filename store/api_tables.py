"""The public API's tables (SQLAlchemy 2 ORM), in the same database as the validator's store.

The validator's tables live in ``store.tables``; the API appends organic ``Invocation`` rows
there for scoring.

- ``ApiKey``: one client key, stored as a SHA-256 digest (the key itself is shown once),
  with its credits, expiry, rate-limit rules, default strategy, allowed models and flags,
  and (since 0005) its owner, scopes and chute allow-list, which ``store.scopes`` reads;
- ``RequestLog``: one row per API request (prompts and answers only when the operator
  opts in);
- ``IdempotencyRecord``: the first answer to a request sent with an ``Idempotency-Key``;
- ``CreditLease``: credits one gateway replica took from a key's balance to reserve in
  memory (``api.credits``); the key's balance is its ``credits`` plus its leases.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class ApiBase(DeclarativeBase):
    pass


class ApiKey(ApiBase):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the key
    hint: Mapped[str] = mapped_column(String(32))  # "cnp_…" + the last 4 characters
    credits: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)  # None: unlimited
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    rate_limits: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of "N/Ws" rules
    default_strategy: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)
    models: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)  # JSON list; None: all
    created_at: Mapped[float] = mapped_column(Float)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)
    # The chute owner (a username) whose chutes the key may deploy, delete, warm up and invoke
    # when private; None (every key made before 0005): no owner's, see store.scopes.
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)
    # JSON list of store.scopes.SCOPES; the server default lets a replica of the previous version
    # keep creating keys during a rolling restart (its admin flag still counts: store.scopes.key_scopes)
    scopes: Mapped[str] = mapped_column(Text, default='["invoke"]', server_default='["invoke"]')
    chutes: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)  # JSON list of "owner/name"; None: all


class RequestLog(ApiBase):
    __tablename__ = "api_request_logs"
    __table_args__ = (Index("ix_api_request_logs_key_time", "key_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the request id
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    route: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256), default="")
    strategy: Mapped[str] = mapped_column(String(64), default="")
    miners_tried: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of uids
    uid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    hotkey: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[int] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(String(64), default="")
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    charged: Mapped[int] = mapped_column(Integer, default=0)
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)
    answer: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)
    created_at: Mapped[float] = mapped_column(Float, index=True)


class IdempotencyRecord(ApiBase):
    __tablename__ = "api_idempotency"
    __table_args__ = (UniqueConstraint("key_id", "idempotency_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    headers: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[float] = mapped_column(Float, index=True)


class CreditLease(ApiBase):
    __tablename__ = "api_credit_leases"
    __table_args__ = (UniqueConstraint("key_id", "replica"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[int] = mapped_column(Integer, index=True)
    replica: Mapped[str] = mapped_column(String(64))  # the gateway process holding it
    credits: Mapped[int] = mapped_column(Integer)  # still unspent, as of updated_at
    updated_at: Mapped[float] = mapped_column(Float, index=True)  # the holder's last heartbeat
