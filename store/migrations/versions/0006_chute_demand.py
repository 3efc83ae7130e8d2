"""The chute demand events (``chute_demand``): calls that found no capacity, and warmups.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "chute_demand" in set(sa.inspect(op.get_bind()).get_table_names()):
        return  # a dev database create_all made
    op.create_table(
        "chute_demand",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("chute_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_chute_demand_chute_id"), "chute_demand", ["chute_id"], unique=False)
    op.create_index(op.f("ix_chute_demand_created_at"), "chute_demand", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_chute_demand_created_at"), table_name="chute_demand")
    op.drop_index(op.f("ix_chute_demand_chute_id"), table_name="chute_demand")
    op.drop_table("chute_demand")
