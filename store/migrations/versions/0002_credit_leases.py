"""Credit leases for the API (``api_credit_leases``) and 64-bit device memory (a GPU has > 2 GiB).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if "api_credit_leases" not in sa.inspect(bind).get_table_names():  # a pre-migration dev database may have it
        op.create_table(
            "api_credit_leases",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("key_id", sa.Integer(), nullable=False),
            sa.Column("replica", sa.String(length=64), nullable=False),
            sa.Column("credits", sa.Integer(), nullable=False),
            sa.Column("updated_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("key_id", "replica"),
        )
        op.create_index(op.f("ix_api_credit_leases_key_id"), "api_credit_leases", ["key_id"], unique=False)
        op.create_index(op.f("ix_api_credit_leases_updated_at"), "api_credit_leases", ["updated_at"], unique=False)
    with op.batch_alter_table("device_verifications") as batch:  # SQLite: the table is copied over
        batch.alter_column("memory_bytes", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("device_verifications") as batch:
        batch.alter_column("memory_bytes", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
    op.drop_index(op.f("ix_api_credit_leases_updated_at"), table_name="api_credit_leases")
    op.drop_index(op.f("ix_api_credit_leases_key_id"), table_name="api_credit_leases")
    op.drop_table("api_credit_leases")
