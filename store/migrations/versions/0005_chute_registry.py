"""The chute registry (``chutes``, ``chute_revisions``) and API keys' ``owner``, ``scopes`` and ``chutes``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

Existing keys keep exactly their rights (``store.scopes``): no owner (so no chute of their
own to deploy), ``scopes`` ``["invoke"]``, or ``["invoke", "admin"]`` where the ``admin``
flag is set, and no chute allow-list. The server default of ``scopes`` also lets an API
replica of the previous version keep creating keys during a rolling restart.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    existing = set(inspector.get_table_names())  # a pre-migration dev database create_all made may have them
    if "chutes" not in existing:
        op.create_table(
            "chutes",
            sa.Column("chute_id", sa.String(length=36), nullable=False),
            sa.Column("owner", sa.String(length=64), nullable=False),
            sa.Column("name", sa.String(length=128), nullable=False),
            sa.Column("revision", sa.String(length=64), nullable=False),
            sa.Column("public", sa.Boolean(), nullable=False),
            sa.Column("description", sa.JSON(), nullable=False),
            sa.Column("max_instances", sa.Integer(), nullable=False),
            sa.Column("shutdown_after_seconds", sa.Integer(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("updated_at", sa.Float(), nullable=False),
            sa.Column("deleted_at", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("chute_id"),
            sa.UniqueConstraint("owner", "name", name="uq_chutes_owner_name"),
        )
    if "chute_revisions" not in existing:
        op.create_table(
            "chute_revisions",
            sa.Column("chute_id", sa.String(length=36), nullable=False),
            sa.Column("revision", sa.String(length=64), nullable=False),
            sa.Column("size", sa.BigInteger(), nullable=False),
            sa.Column("bundle", sa.LargeBinary(), nullable=False),
            sa.Column("description", sa.JSON(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.ForeignKeyConstraint(["chute_id"], ["chutes.chute_id"]),
            sa.PrimaryKeyConstraint("chute_id", "revision"),
        )
        op.create_index(op.f("ix_chute_revisions_revision"), "chute_revisions", ["revision"], unique=False)

    columns = {column["name"] for column in inspector.get_columns("api_keys")}
    if "owner" not in columns:
        op.add_column("api_keys", sa.Column("owner", sa.String(length=64), nullable=True))
    if "chutes" not in columns:
        op.add_column("api_keys", sa.Column("chutes", sa.Text(), nullable=True))
    if "scopes" not in columns:
        op.add_column("api_keys", sa.Column("scopes", sa.Text(), server_default=json.dumps(["invoke"]), nullable=False))
        keys = sa.table("api_keys", sa.column("admin", sa.Boolean), sa.column("scopes", sa.Text))
        op.execute(keys.update().where(keys.c.admin.is_(True)).values(scopes=json.dumps(["invoke", "admin"])))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:  # SQLite: the table is copied over
        batch.drop_column("scopes")
        batch.drop_column("chutes")
        batch.drop_column("owner")
    op.drop_index(op.f("ix_chute_revisions_revision"), table_name="chute_revisions")
    op.drop_table("chute_revisions")
    op.drop_table("chutes")
