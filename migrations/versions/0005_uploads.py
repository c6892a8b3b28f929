"""tenants' uploaded datasets and checkpoints

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table("uploads",
                    sa.Column("id", sa.String(length=36), nullable=False),
                    sa.Column("tenant", sa.String(length=200), nullable=False),
                    sa.Column("kind", sa.String(length=20), nullable=False),
                    sa.Column("bytes", sa.BigInteger(), nullable=False),
                    sa.Column("sha256", sa.String(length=64), nullable=False),
                    sa.Column("meta", JSON, nullable=False),
                    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
                    sa.PrimaryKeyConstraint("id"))
    op.create_index("ix_uploads_tenant_kind_created", "uploads", ["tenant", "kind", "created_at"])


def downgrade() -> None:
    op.drop_table("uploads")
