"""jobs.dispatched_at (re-sending lost messages) and worker_beats (readiness)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 05:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table("worker_beats",
                    sa.Column("name", sa.String(length=200), nullable=False),
                    sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
                    sa.PrimaryKeyConstraint("name"))


def downgrade() -> None:
    op.drop_table("worker_beats")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("dispatched_at")
