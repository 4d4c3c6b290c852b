"""curated image seeds: which curated images Dockyard has put in the catalog itself

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 21:37:27.656166
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dockyard.models.base

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('curated_image_seeds',
    sa.Column('reference', sa.String(length=255), nullable=False),
    sa.Column('seeded_at', dockyard.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('outcome', sa.String(length=40), nullable=False),
    sa.PrimaryKeyConstraint('reference', name=op.f('pk_curated_image_seeds'))
    )


def downgrade() -> None:
    op.drop_table('curated_image_seeds')
