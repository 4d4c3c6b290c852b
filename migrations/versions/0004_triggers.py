"""triggers: schedules, runs after runs, runs on new data, backfills, and what fired a run

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 02:35:39.410000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dockyard.models.base

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('trigger_cursors',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('position', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_trigger_cursors'))
    )
    op.create_table('backfills',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('definition_id', sa.Integer(), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('items', sa.JSON(), nullable=False),
    sa.Column('next_index', sa.Integer(), nullable=False),
    sa.Column('max_parallel', sa.Integer(), nullable=False),
    sa.Column('created_at', dockyard.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', dockyard.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['definition_id'], ['job_definitions.id'], name=op.f('fk_backfills_definition_id_job_definitions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_backfills'))
    )
    with op.batch_alter_table('backfills', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_backfills_definition_id'), ['definition_id'], unique=False)

    op.create_table('trigger_fires',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('definition_id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('outcome', sa.String(length=255), nullable=False),
    sa.Column('at', dockyard.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['definition_id'], ['job_definitions.id'], name=op.f('fk_trigger_fires_definition_id_job_definitions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_trigger_fires_run_id_runs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trigger_fires')),
    sa.UniqueConstraint('definition_id', 'key', name=op.f('uq_trigger_fires_definition_id_key'))
    )
    with op.batch_alter_table('trigger_fires', schema=None) as batch_op:
        batch_op.create_index('ix_trigger_fires_definition_id_id', ['definition_id', 'id'], unique=False)

    with op.batch_alter_table('job_definitions', schema=None) as batch_op:
        # Every definition made before notebook definitions existed runs a command.
        batch_op.add_column(sa.Column('kind', sa.String(length=16), server_default='command', nullable=False))
        batch_op.add_column(sa.Column('notebook', sa.JSON(none_as_null=True), nullable=True))
        batch_op.add_column(sa.Column('schedule', sa.JSON(none_as_null=True), nullable=True))
        batch_op.add_column(sa.Column('paused', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('next_fire_at', dockyard.models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('after', sa.JSON(none_as_null=True), nullable=True))
        batch_op.add_column(sa.Column('after_definition_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('on_batch', sa.JSON(none_as_null=True), nullable=True))
        batch_op.add_column(sa.Column('on_batch_table_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('triggers_since', dockyard.models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_job_definitions_after_definition_id'), ['after_definition_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_job_definitions_next_fire_at'), ['next_fire_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_job_definitions_on_batch_table_id'), ['on_batch_table_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_job_definitions_on_batch_table_id_tables'), 'tables', ['on_batch_table_id'], ['id'], ondelete='SET NULL')
        batch_op.create_foreign_key(batch_op.f('fk_job_definitions_after_definition_id_job_definitions'), 'job_definitions', ['after_definition_id'], ['id'], ondelete='SET NULL')

    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('trigger', sa.JSON(none_as_null=True), nullable=True))

    # The trigger thread re-reads the last minute of run events and commits each pass.
    with op.batch_alter_table('run_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_run_events_at'), ['at'], unique=False)

    with op.batch_alter_table('pointer_history', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pointer_history_at'), ['at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('pointer_history', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pointer_history_at'))

    with op.batch_alter_table('run_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_events_at'))

    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('trigger')

    with op.batch_alter_table('job_definitions', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_job_definitions_after_definition_id_job_definitions'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_job_definitions_on_batch_table_id_tables'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_job_definitions_on_batch_table_id'))
        batch_op.drop_index(batch_op.f('ix_job_definitions_next_fire_at'))
        batch_op.drop_index(batch_op.f('ix_job_definitions_after_definition_id'))
        batch_op.drop_column('triggers_since')
        batch_op.drop_column('on_batch_table_id')
        batch_op.drop_column('on_batch')
        batch_op.drop_column('after_definition_id')
        batch_op.drop_column('after')
        batch_op.drop_column('next_fire_at')
        batch_op.drop_column('paused')
        batch_op.drop_column('schedule')
        batch_op.drop_column('notebook')
        batch_op.drop_column('kind')

    with op.batch_alter_table('trigger_fires', schema=None) as batch_op:
        batch_op.drop_index('ix_trigger_fires_definition_id_id')

    op.drop_table('trigger_fires')
    with op.batch_alter_table('backfills', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_backfills_definition_id'))

    op.drop_table('backfills')
    op.drop_table('trigger_cursors')
