"""Baseline: the validator's and the API's tables as the first release created them.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

A database created before migrations existed (``create_all``: the validator's tables, and
the API's when an API ran on it) has no ``alembic_version``: this revision then creates
only the tables it lacks, keeping every row of the others.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())  # a database create_all made before migrations
    if 'api_idempotency' not in existing:
        op.create_table('api_idempotency',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('key_id', sa.Integer(), nullable=False),
        sa.Column('idempotency_key', sa.String(length=255), nullable=False),
        sa.Column('request_hash', sa.String(length=64), nullable=False),
        sa.Column('status', sa.Integer(), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('headers', sa.Text(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('key_id', 'idempotency_key')
        )
        op.create_index(op.f('ix_api_idempotency_created_at'), 'api_idempotency', ['created_at'], unique=False)
    if 'api_keys' not in existing:
        op.create_table('api_keys',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('key_hash', sa.String(length=64), nullable=False),
        sa.Column('hint', sa.String(length=32), nullable=False),
        sa.Column('credits', sa.Integer(), nullable=True),
        sa.Column('expires_at', sa.Float(), nullable=True),
        sa.Column('disabled', sa.Boolean(), nullable=False),
        sa.Column('admin', sa.Boolean(), nullable=False),
        sa.Column('rate_limits', sa.Text(), nullable=False),
        sa.Column('default_strategy', sa.String(length=64), nullable=True),
        sa.Column('models', sa.Text(), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('last_used_at', sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('key_hash'),
        sa.UniqueConstraint('name')
        )
    if 'api_request_logs' not in existing:
        op.create_table('api_request_logs',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('key_id', sa.Integer(), nullable=True),
        sa.Column('route', sa.String(length=64), nullable=False),
        sa.Column('model', sa.String(length=256), nullable=False),
        sa.Column('strategy', sa.String(length=64), nullable=False),
        sa.Column('miners_tried', sa.Text(), nullable=False),
        sa.Column('uid', sa.Integer(), nullable=True),
        sa.Column('hotkey', sa.String(length=64), nullable=False),
        sa.Column('status', sa.Integer(), nullable=False),
        sa.Column('error', sa.String(length=64), nullable=False),
        sa.Column('latency_ms', sa.Float(), nullable=False),
        sa.Column('prompt_tokens', sa.Integer(), nullable=False),
        sa.Column('completion_tokens', sa.Integer(), nullable=False),
        sa.Column('charged', sa.Integer(), nullable=False),
        sa.Column('prompt', sa.Text(), nullable=True),
        sa.Column('answer', sa.Text(), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id')
        )
        op.create_index(op.f('ix_api_request_logs_created_at'), 'api_request_logs', ['created_at'], unique=False)
        op.create_index('ix_api_request_logs_key_time', 'api_request_logs', ['key_id', 'created_at'], unique=False)
    if 'device_verifications' not in existing:
        op.create_table('device_verifications',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('miner_hotkey', sa.String(length=64), nullable=False),
        sa.Column('uuid', sa.String(length=128), nullable=False),
        sa.Column('ok', sa.Boolean(), nullable=False),
        sa.Column('reason', sa.String(length=64), nullable=False),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.Column('model_id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('memory_bytes', sa.Integer(), nullable=False),
        sa.Column('elapsed_s', sa.Float(), nullable=False),
        sa.Column('expected_s', sa.Float(), nullable=False),
        sa.Column('throughput_macs_s', sa.Float(), nullable=False),
        sa.Column('samples', sa.Integer(), nullable=False),
        sa.Column('verify_cpu_s', sa.Float(), nullable=False),
        sa.Column('verified_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id')
        )
        op.create_index(op.f('ix_device_verifications_miner_hotkey'), 'device_verifications', ['miner_hotkey'], unique=False)
        op.create_index(op.f('ix_device_verifications_uuid'), 'device_verifications', ['uuid'], unique=False)
        op.create_index(op.f('ix_device_verifications_verified_at'), 'device_verifications', ['verified_at'], unique=False)
    if 'invocations' not in existing:
        op.create_table('invocations',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('miner_hotkey', sa.String(length=64), nullable=False),
        sa.Column('chute_id', sa.String(length=128), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('ok', sa.Boolean(), nullable=False),
        sa.Column('error', sa.String(length=64), nullable=False),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.Column('key', sa.String(length=160), nullable=False),
        sa.Column('compute_s', sa.Float(), nullable=False),
        sa.Column('measured_compute_s', sa.Float(), nullable=True),
        sa.Column('prompt_tokens', sa.Integer(), nullable=False),
        sa.Column('completion_tokens', sa.Integer(), nullable=False),
        sa.Column('latency_s', sa.Float(), nullable=False),
        sa.Column('ttft_s', sa.Float(), nullable=True),
        sa.Column('tokens_per_s', sa.Float(), nullable=True),
        sa.Column('flagged', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id')
        )
        op.create_index('ix_invocations_window', 'invocations', ['created_at', 'miner_hotkey'], unique=False)
    if 'miners' not in existing:
        op.create_table('miners',
        sa.Column('hotkey', sa.String(length=64), nullable=False),
        sa.Column('uid', sa.Integer(), nullable=False),
        sa.Column('coldkey', sa.String(length=64), nullable=False),
        sa.Column('axon', sa.String(length=128), nullable=False),
        sa.Column('first_seen_at', sa.Float(), nullable=False),
        sa.Column('last_seen_at', sa.Float(), nullable=False),
        sa.Column('last_reachable_at', sa.Float(), nullable=True),
        sa.Column('devices_claimed', sa.Integer(), nullable=False),
        sa.Column('chutes_hosted', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('hotkey')
        )
        op.create_index(op.f('ix_miners_coldkey'), 'miners', ['coldkey'], unique=False)
    if 'score_history' not in existing:
        op.create_table('score_history',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('step', sa.Integer(), nullable=False),
        sa.Column('block', sa.Integer(), nullable=False),
        sa.Column('hotkey', sa.String(length=64), nullable=False),
        sa.Column('uid', sa.Integer(), nullable=True),
        sa.Column('raw', sa.Float(), nullable=False),
        sa.Column('score', sa.Float(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id')
        )
        op.create_index(op.f('ix_score_history_created_at'), 'score_history', ['created_at'], unique=False)
        op.create_index(op.f('ix_score_history_hotkey'), 'score_history', ['hotkey'], unique=False)
        op.create_index(op.f('ix_score_history_step'), 'score_history', ['step'], unique=False)
    if 'scores' not in existing:
        op.create_table('scores',
        sa.Column('hotkey', sa.String(length=64), nullable=False),
        sa.Column('score', sa.Float(), nullable=False),
        sa.Column('raw', sa.Float(), nullable=False),
        sa.Column('step', sa.Integer(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('hotkey')
        )
    if 'weight_submissions' not in existing:
        op.create_table('weight_submissions',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('block', sa.Integer(), nullable=False),
        sa.Column('ok', sa.Boolean(), nullable=False),
        sa.Column('uids', sa.Text(), nullable=False),
        sa.Column('weights', sa.Text(), nullable=False),
        sa.Column('version_key', sa.Integer(), nullable=False),
        sa.Column('commit_reveal', sa.Boolean(), nullable=False),
        sa.Column('message', sa.Text(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id')
        )
        op.create_index(op.f('ix_weight_submissions_block'), 'weight_submissions', ['block'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_weight_submissions_block'), table_name='weight_submissions')
    op.drop_table('weight_submissions')
    op.drop_table('scores')
    op.drop_index(op.f('ix_score_history_step'), table_name='score_history')
    op.drop_index(op.f('ix_score_history_hotkey'), table_name='score_history')
    op.drop_index(op.f('ix_score_history_created_at'), table_name='score_history')
    op.drop_table('score_history')
    op.drop_index(op.f('ix_miners_coldkey'), table_name='miners')
    op.drop_table('miners')
    op.drop_index('ix_invocations_window', table_name='invocations')
    op.drop_table('invocations')
    op.drop_index(op.f('ix_device_verifications_verified_at'), table_name='device_verifications')
    op.drop_index(op.f('ix_device_verifications_uuid'), table_name='device_verifications')
    op.drop_index(op.f('ix_device_verifications_miner_hotkey'), table_name='device_verifications')
    op.drop_table('device_verifications')
    op.drop_index('ix_api_request_logs_key_time', table_name='api_request_logs')
    op.drop_index(op.f('ix_api_request_logs_created_at'), table_name='api_request_logs')
    op.drop_table('api_request_logs')
    op.drop_table('api_keys')
    op.drop_index(op.f('ix_api_idempotency_created_at'), table_name='api_idempotency')
    op.drop_table('api_idempotency')
