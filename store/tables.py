"""The validator store's tables (SQLAlchemy 2 ORM), shared by the validator and the public API.

``store.queries`` holds the queries; the API appends organic ``Invocation`` rows to the same
database. One class per table:

- ``Miner``: every serving miner the validator has seen (uid, coldkey, axon, reachability);
- ``DeviceVerification``: each GraVal result, pass or fail, with its reason and timing;
- ``DeviceOwner``: which hotkey each device uuid belongs to network-wide (the first with a
  passing verification, or the operator's choice: ``canopy devices``);
- ``GravalSweep``: every re-verification sweep (all devices of all miners at once);
- ``Invocation``: one chute call (``source`` "synthetic" by the validator, "organic" by the
  API) with its miner, chute, outcome, compute seconds, tokens and latencies (``steered``:
  an organic call whose miner the caller chose, which scoring skips);
- ``Score``: the current smoothed score of each hotkey (what a restart resumes from);
- ``ScoreHistory``: every step's raw and smoothed score per hotkey;
- ``WeightSubmission``: every ``set_weights`` attempt, its vector and what the chain said.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Float, Index, Integer, String, Text, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ORGANIC, SYNTHETIC = "organic", "synthetic"


class Base(DeclarativeBase):
    pass


class Miner(Base):
    __tablename__ = "miners"

    hotkey: Mapped[str] = mapped_column(String(64), primary_key=True)
    uid: Mapped[int] = mapped_column(Integer)
    coldkey: Mapped[str] = mapped_column(String(64), index=True)
    axon: Mapped[str] = mapped_column(String(128), default="")
    first_seen_at: Mapped[float] = mapped_column(Float)
    last_seen_at: Mapped[float] = mapped_column(Float)
    last_reachable_at: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)
    devices_claimed: Mapped[int] = mapped_column(Integer, default=0)
    chutes_hosted: Mapped[int] = mapped_column(Integer, default=0)


class DeviceVerification(Base):
    __tablename__ = "device_verifications"
    # A device's latest row is per (miner_hotkey, uuid): another hotkey's claim never replaces it.
    __table_args__ = (Index("ix_device_verifications_device", "miner_hotkey", "uuid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    miner_hotkey: Mapped[str] = mapped_column(String(64), index=True)
    uuid: Mapped[str] = mapped_column(String(128), index=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")
    model_id: Mapped[str] = mapped_column(String(32), default="")
    name: Mapped[str] = mapped_column(String(128), default="")
    memory_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # 64-bit on Postgres: GPUs have > 2 GiB
    # what a passing proof established (resident matrices + workspace); 0 before 0004 or on failure
    proven_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # of what a whole-device proof establishes: < 1 for a device proven beside its instances
    proven_fraction: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    elapsed_s: Mapped[float] = mapped_column(Float, default=0.0)
    expected_s: Mapped[float] = mapped_column(Float, default=0.0)
    throughput_macs_s: Mapped[float] = mapped_column(Float, default=0.0)
    samples: Mapped[int] = mapped_column(Integer, default=0)
    verify_cpu_s: Mapped[float] = mapped_column(Float, default=0.0)
    verified_at: Mapped[float] = mapped_column(Float, index=True)


class DeviceOwner(Base):
    """The hotkey a device uuid belongs to: the first with a passing verification of it (a later
    claim by another hotkey is refused as ``uuid_taken``), until that hotkey deregisters, unless
    ``pinned`` by the operator (``canopy devices owner``), which nothing releases but the operator."""

    __tablename__ = "device_owners"

    uuid: Mapped[str] = mapped_column(String(128), primary_key=True)
    hotkey: Mapped[str] = mapped_column(String(64), index=True)
    since: Mapped[float] = mapped_column(Float)
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)


class GravalSweep(Base):
    """One re-verification sweep: every device of every reachable miner challenged at once."""

    __tablename__ = "graval_sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started_at: Mapped[float] = mapped_column(Float, index=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)
    miners: Mapped[int] = mapped_column(Integer, default=0)
    devices: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)


class Invocation(Base):
    __tablename__ = "invocations"
    # Only the window index: with one on miner_hotkey too, SQLite's planner walks that one for
    # GROUP BY miner and looks up every row (bench/validator.py: 4x slower at 1M rows).
    __table_args__ = (Index("ix_invocations_window", "created_at", "miner_hotkey"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    miner_hotkey: Mapped[str] = mapped_column(String(64))
    chute_id: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(16))  # ORGANIC | SYNTHETIC
    ok: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    key: Mapped[str] = mapped_column(String(160), default="")  # synthetic: the probe compared across miners
    # credited: measured by the validator or the API (synthetic: the probe's median duration;
    # organic: request sent -> last byte at the gateway), never the miner's report
    compute_s: Mapped[float] = mapped_column(Float, default=0.0)
    measured_compute_s: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)  # as the miner reported it
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    ttft_s: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)
    tokens_per_s: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    # Organic: the caller picked the miner (uids/top_n, /chat fan-out it narrowed): served and
    # logged, never scored (store.queries.invocation_sums).
    steered: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[float] = mapped_column(Float)


class Score(Base):
    __tablename__ = "scores"

    hotkey: Mapped[str] = mapped_column(String(64), primary_key=True)
    score: Mapped[float] = mapped_column(Float)
    raw: Mapped[float] = mapped_column(Float, default=0.0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[float] = mapped_column(Float)


class ScoreHistory(Base):
    __tablename__ = "score_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    step: Mapped[int] = mapped_column(Integer, index=True)
    block: Mapped[int] = mapped_column(Integer)
    hotkey: Mapped[str] = mapped_column(String(64), index=True)
    uid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    raw: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float, index=True)


class WeightSubmission(Base):
    __tablename__ = "weight_submissions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    block: Mapped[int] = mapped_column(Integer, index=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    uids: Mapped[str] = mapped_column(Text)  # JSON list
    weights: Mapped[str] = mapped_column(Text)  # JSON list
    version_key: Mapped[int] = mapped_column(Integer, default=0)
    commit_reveal: Mapped[bool] = mapped_column(Boolean, default=False)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
