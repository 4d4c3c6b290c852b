"""images.size_bytes is a BIGINT: an image over 2 GiB overflowed INTEGER on PostgreSQL

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 11:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('images') as batch:
        batch.alter_column('size_bytes', existing_type=sa.Integer(), type_=sa.BigInteger(),
                           existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table('images') as batch:
        batch.alter_column('size_bytes', existing_type=sa.BigInteger(), type_=sa.Integer(),
                           existing_nullable=True)
