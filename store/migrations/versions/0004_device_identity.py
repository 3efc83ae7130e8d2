"""Device identity: ``device_owners`` (a uuid verified for one hotkey is refused for any other),
``graval_sweeps`` (re-verification sweeps, so a restart keeps their cadence), an index on
``device_verifications (miner_hotkey, uuid)`` (a device's latest row is per hotkey and uuid)
and ``device_verifications.proven_bytes`` (the memory a passing proof established, which
sets an uncalibrated row's multiplier; 0 on older rows, which then use ``memory_bytes``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

Existing verifications give the owners: each uuid belongs to the hotkey of its oldest passing
verification still stored (first verified wins), not pinned.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    existing = set(inspector.get_table_names())  # a pre-migration dev database create_all made may have them
    if "device_owners" not in existing:
        op.create_table(
            "device_owners",
            sa.Column("uuid", sa.String(length=128), nullable=False),
            sa.Column("hotkey", sa.String(length=64), nullable=False),
            sa.Column("since", sa.Float(), nullable=False),
            sa.Column("pinned", sa.Boolean(), nullable=False),
            sa.PrimaryKeyConstraint("uuid"),
        )
        op.create_index(op.f("ix_device_owners_hotkey"), "device_owners", ["hotkey"], unique=False)
    if "graval_sweeps" not in existing:
        op.create_table(
            "graval_sweeps",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("started_at", sa.Float(), nullable=False),
            sa.Column("finished_at", sa.Float(), nullable=True),
            sa.Column("miners", sa.Integer(), nullable=False),
            sa.Column("devices", sa.Integer(), nullable=False),
            sa.Column("failed", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index(op.f("ix_graval_sweeps_started_at"), "graval_sweeps", ["started_at"], unique=False)
    columns = {column["name"] for column in inspector.get_columns("device_verifications")}
    if "proven_bytes" not in columns:
        op.add_column("device_verifications", sa.Column("proven_bytes", sa.BigInteger(), server_default="0",
                                                        nullable=False))
    if "proven_fraction" not in columns:
        op.add_column("device_verifications", sa.Column("proven_fraction", sa.Float(), server_default="1",
                                                        nullable=False))
    indexes = {index["name"] for index in inspector.get_indexes("device_verifications")}
    if "ix_device_verifications_device" not in indexes:
        op.create_index("ix_device_verifications_device", "device_verifications", ["miner_hotkey", "uuid"], unique=False)

    rows = sa.table("device_verifications", sa.column("id", sa.Integer), sa.column("uuid", sa.String),
                    sa.column("miner_hotkey", sa.String), sa.column("ok", sa.Boolean), sa.column("verified_at", sa.Float))
    owners = sa.table("device_owners", sa.column("uuid", sa.String), sa.column("hotkey", sa.String),
                      sa.column("since", sa.Float), sa.column("pinned", sa.Boolean))
    first = (sa.select(rows.c.uuid, sa.func.min(rows.c.id).label("id")).where(rows.c.ok.is_(True))
             .group_by(rows.c.uuid).subquery())
    oldest_pass = (sa.select(rows.c.uuid, rows.c.miner_hotkey, rows.c.verified_at, sa.false())
                   .join(first, rows.c.id == first.c.id)
                   .where(rows.c.uuid.not_in(sa.select(owners.c.uuid))))
    op.execute(owners.insert().from_select(["uuid", "hotkey", "since", "pinned"], oldest_pass))


def downgrade() -> None:
    with op.batch_alter_table("device_verifications") as batch:  # SQLite: the table is copied over
        batch.drop_index("ix_device_verifications_device")
        batch.drop_column("proven_bytes")
        batch.drop_column("proven_fraction")
    op.drop_index(op.f("ix_graval_sweeps_started_at"), table_name="graval_sweeps")
    op.drop_table("graval_sweeps")
    op.drop_index(op.f("ix_device_owners_hotkey"), table_name="device_owners")
    op.drop_table("device_owners")
