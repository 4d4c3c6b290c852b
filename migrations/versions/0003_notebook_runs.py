"""notebook runs: a run's kind and, for a notebook run, its notebook

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 02:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        # Every run made before notebook jobs existed ran a command.
        batch_op.add_column(sa.Column('kind', sa.String(length=16), nullable=False,
                                      server_default='command'))
        batch_op.add_column(sa.Column('notebook', sa.JSON(none_as_null=True), nullable=True))
        batch_op.create_index('ix_runs_owner_kind_id', ['owner', 'kind', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_owner_kind_id')
        batch_op.drop_column('notebook')
        batch_op.drop_column('kind')
