"""Initial schema: task ledger, episodes (+ rollups), candidates, model registry, training runs, evaluations.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('episode_rollups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('task_family', sa.String(length=32), nullable=False),
    sa.Column('world_model_version_id', sa.Integer(), nullable=False),
    sa.Column('idm_version_id', sa.Integer(), nullable=False),
    sa.Column('backend', sa.String(length=64), nullable=False),
    sa.Column('policy', sa.String(length=64), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('n_success', sa.Integer(), nullable=False),
    sa.Column('reward_sum', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_episode_rollups')),
    sa.UniqueConstraint('day', 'task_family', 'world_model_version_id', 'idm_version_id', 'backend', 'policy', 'source', name='uq_episode_rollups_key')
    )
    op.create_table('task_specs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('family', sa.String(length=32), nullable=False),
    sa.Column('instruction', sa.Text(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=True),
    sa.Column('split', sa.String(length=32), nullable=True),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task_specs'))
    )
    op.create_table('task_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('task_spec_id', sa.Integer(), nullable=True),
    sa.Column('idempotency_key', sa.String(length=128), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('queue', sa.String(length=64), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=128), nullable=True),
    sa.Column('celery_task_id', sa.String(length=64), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('deadline', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("state IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')", name=op.f('ck_task_runs_state')),
    sa.ForeignKeyConstraint(['task_spec_id'], ['task_specs.id'], name=op.f('fk_task_runs_task_spec_id_task_specs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task_runs')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_task_runs_idempotency_key'))
    )
    with op.batch_alter_table('task_runs', schema=None) as batch_op:
        batch_op.create_index('ix_task_runs_state_heartbeat', ['state', 'heartbeat_at'], unique=False)

    op.create_table('training_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('data_snapshot', sa.JSON(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('task_run_id', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("state IN ('running', 'succeeded', 'failed')", name=op.f('ck_training_runs_state')),
    sa.ForeignKeyConstraint(['task_run_id'], ['task_runs.id'], name=op.f('fk_training_runs_task_run_id_task_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_training_runs'))
    )
    op.create_table('model_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('artifact_uri', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('config_hash', sa.String(length=64), nullable=False),
    sa.Column('data_snapshot', sa.JSON(), nullable=False),
    sa.Column('training_run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('world_model', 'idm', 'policy')", name=op.f('ck_model_versions_kind')),
    sa.ForeignKeyConstraint(['parent_id'], ['model_versions.id'], name=op.f('fk_model_versions_parent_id_model_versions')),
    sa.ForeignKeyConstraint(['training_run_id'], ['training_runs.id'], name=op.f('fk_model_versions_training_run_id_training_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_versions')),
    sa.UniqueConstraint('kind', 'version', name='uq_model_versions_kind_version')
    )
    op.create_table('alias_history',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('alias', sa.String(length=64), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('previous_version_id', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_alias_history_model_version_id_model_versions')),
    sa.ForeignKeyConstraint(['previous_version_id'], ['model_versions.id'], name=op.f('fk_alias_history_previous_version_id_model_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alias_history'))
    )
    with op.batch_alter_table('alias_history', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alias_history_alias'), ['alias'], unique=False)

    op.create_table('aliases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('alias', sa.String(length=64), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_aliases_model_version_id_model_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_aliases')),
    sa.UniqueConstraint('kind', 'alias', name='uq_aliases_kind_alias')
    )
    op.create_table('episodes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('task_run_id', sa.Integer(), nullable=True),
    sa.Column('task_spec_id', sa.Integer(), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('backend', sa.String(length=64), nullable=False),
    sa.Column('policy', sa.String(length=64), nullable=False),
    sa.Column('world_model_version_id', sa.Integer(), nullable=True),
    sa.Column('idm_version_id', sa.Integer(), nullable=True),
    sa.Column('task_family', sa.String(length=32), nullable=False),
    sa.Column('split', sa.String(length=32), nullable=True),
    sa.Column('instruction', sa.Text(), nullable=False),
    sa.Column('caption', sa.Text(), nullable=True),
    sa.Column('seed', sa.Integer(), nullable=True),
    sa.Column('task', sa.JSON(), nullable=True),
    sa.Column('initial_state_uri', sa.Text(), nullable=True),
    sa.Column('initial_state_sha256', sa.String(length=64), nullable=True),
    sa.Column('success', sa.Boolean(), nullable=False),
    sa.Column('reward', sa.Float(), nullable=False),
    sa.Column('length', sa.Integer(), nullable=False),
    sa.Column('timings', sa.JSON(), nullable=False),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('artifact_uri', sa.Text(), nullable=True),
    sa.Column('artifact_sha256', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("source IN ('expert', 'play', 'rollout')", name=op.f('ck_episodes_source')),
    sa.ForeignKeyConstraint(['idm_version_id'], ['model_versions.id'], name=op.f('fk_episodes_idm_version_id_model_versions')),
    sa.ForeignKeyConstraint(['task_run_id'], ['task_runs.id'], name=op.f('fk_episodes_task_run_id_task_runs')),
    sa.ForeignKeyConstraint(['task_spec_id'], ['task_specs.id'], name=op.f('fk_episodes_task_spec_id_task_specs')),
    sa.ForeignKeyConstraint(['world_model_version_id'], ['model_versions.id'], name=op.f('fk_episodes_world_model_version_id_model_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_episodes')),
    sa.UniqueConstraint('task_run_id', name=op.f('uq_episodes_task_run_id'))
    )
    with op.batch_alter_table('episodes', schema=None) as batch_op:
        batch_op.create_index('ix_episodes_task_model_backend_time', ['task_family', 'world_model_version_id', 'backend', 'created_at', 'success'], unique=False)

    op.create_table('evaluations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('suite', sa.String(length=64), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=True),
    sa.Column('metric', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('ci_low', sa.Float(), nullable=True),
    sa.Column('ci_high', sa.Float(), nullable=True),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_evaluations_model_version_id_model_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_evaluations'))
    )
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.create_index('ix_evaluations_version_suite_metric', ['model_version_id', 'suite', 'metric'], unique=False)

    op.create_table('candidates',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('episode_id', sa.Integer(), nullable=False),
    sa.Column('plan_step', sa.Integer(), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('scores', sa.JSON(), nullable=False),
    sa.Column('chosen', sa.Boolean(), nullable=False),
    sa.Column('rejected_reason', sa.Text(), nullable=True),
    sa.Column('artifact_uri', sa.Text(), nullable=True),
    sa.Column('artifact_sha256', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['episode_id'], ['episodes.id'], name=op.f('fk_candidates_episode_id_episodes')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_candidates')),
    sa.UniqueConstraint('episode_id', 'plan_step', 'index', name='uq_candidates_episode_step_index')
    )


def downgrade() -> None:
    op.drop_table('candidates')
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_index('ix_evaluations_version_suite_metric')

    op.drop_table('evaluations')
    with op.batch_alter_table('episodes', schema=None) as batch_op:
        batch_op.drop_index('ix_episodes_task_model_backend_time')

    op.drop_table('episodes')
    op.drop_table('aliases')
    with op.batch_alter_table('alias_history', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_alias_history_alias'))

    op.drop_table('alias_history')
    op.drop_table('model_versions')
    op.drop_table('training_runs')
    with op.batch_alter_table('task_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_task_runs_state_heartbeat')

    op.drop_table('task_runs')
    op.drop_table('task_specs')
    op.drop_table('episode_rollups')
