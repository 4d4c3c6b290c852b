"""clusters: Spark and Ray clusters, and the cluster a run or definition asks for

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 05:12:45.533225
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dockyard.models.base

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('clusters',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.Enum('ray', 'spark', name='clusterkind', native_enum=False, length=16), nullable=False),
    sa.Column('image', sa.String(length=255), nullable=False),
    sa.Column('pool', sa.String(length=64), nullable=False),
    sa.Column('backend', sa.String(length=32), nullable=True),
    sa.Column('workers', sa.Integer(), nullable=False),
    sa.Column('worker_cpu', sa.Double(), nullable=False),
    sa.Column('worker_memory_mb', sa.Integer(), nullable=False),
    sa.Column('head_cpu', sa.Double(), nullable=False),
    sa.Column('head_memory_mb', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('queued', 'starting', 'running', 'stopping', 'stopped', 'failed', name='clusterstate', native_enum=False, length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('worker', sa.String(length=128), nullable=True),
    sa.Column('network', sa.String(length=255), nullable=True),
    sa.Column('address', sa.String(length=255), nullable=False),
    sa.Column('dashboard_url', sa.String(length=255), nullable=True),
    sa.Column('stop_requested', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('created_at', dockyard.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', dockyard.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('ended_at', dockyard.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('idle_timeout_seconds', sa.Integer(), nullable=False),
    sa.Column('last_activity_at', dockyard.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_clusters_run_id_runs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_clusters'))
    )
    with op.batch_alter_table('clusters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_clusters_owner'), ['owner'], unique=False)
        # A user's live clusters have distinct names; ended ones do not count.
        batch_op.create_index('ix_clusters_owner_name_live', ['owner', 'name'], unique=True, sqlite_where=sa.text("status NOT IN ('stopped', 'failed')"), postgresql_where=sa.text("status NOT IN ('stopped', 'failed')"))
        batch_op.create_index(batch_op.f('ix_clusters_run_id'), ['run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_clusters_status'), ['status'], unique=False)

    with op.batch_alter_table('job_definitions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cluster', sa.JSON(none_as_null=True), nullable=True))

    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cluster', sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('cluster')

    with op.batch_alter_table('job_definitions', schema=None) as batch_op:
        batch_op.drop_column('cluster')

    with op.batch_alter_table('clusters', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_clusters_status'))
        batch_op.drop_index(batch_op.f('ix_clusters_run_id'))
        batch_op.drop_index('ix_clusters_owner_name_live', sqlite_where=sa.text("status NOT IN ('stopped', 'failed')"), postgresql_where=sa.text("status NOT IN ('stopped', 'failed')"))
        batch_op.drop_index(batch_op.f('ix_clusters_owner'))

    op.drop_table('clusters')
