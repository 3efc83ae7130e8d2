"""``invocations.steered``: an organic call whose miner the caller chose (served, logged, never scored).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24

Existing rows become unsteered (``false``), as they were counted. The server default also
lets an API replica of the previous version keep inserting rows during a rolling restart.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("invocations")}
    if "steered" not in columns:  # a pre-migration dev database create_all made from the newest tables has it
        op.add_column("invocations", sa.Column("steered", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("invocations") as batch:  # SQLite: the table is copied over
        batch.drop_column("steered")
