"""bytes reserved by uploads in progress, counted against the tenant's quota while they are written

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 20:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("upload_reservations",
                    sa.Column("id", sa.String(length=36), nullable=False),
                    sa.Column("tenant", sa.String(length=200), nullable=False),
                    sa.Column("bytes", sa.BigInteger(), nullable=False),
                    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
                    sa.PrimaryKeyConstraint("id"))
    op.create_index("ix_upload_reservations_tenant", "upload_reservations", ["tenant"])


def downgrade() -> None:
    op.drop_table("upload_reservations")
