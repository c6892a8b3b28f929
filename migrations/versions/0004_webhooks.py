"""webhook endpoints, their outbox of messages, and every delivery attempt

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table("webhook_endpoints",
                    sa.Column("id", sa.String(length=36), nullable=False),
                    sa.Column("tenant", sa.String(length=200), nullable=False),
                    sa.Column("url", sa.String(length=2000), nullable=False),
                    sa.Column("events", JSON, nullable=False),
                    sa.Column("secret", sa.String(length=100), nullable=False),
                    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
                    sa.PrimaryKeyConstraint("id"))
    op.create_index("ix_webhook_endpoints_tenant_created", "webhook_endpoints", ["tenant", "created_at"])
    op.create_table("webhook_messages",
                    sa.Column("id", sa.String(length=40), nullable=False),
                    sa.Column("endpoint_id", sa.String(length=36), nullable=False),
                    sa.Column("job_id", sa.String(length=36), nullable=False),
                    sa.Column("event", sa.String(length=20), nullable=False),
                    sa.Column("status", sa.String(length=10), nullable=False),
                    sa.Column("attempts", sa.Integer(), nullable=False),
                    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
                    sa.Column("lease_owner", sa.String(length=200), nullable=True),
                    sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
                    sa.Column("body", sa.Text(), nullable=True),
                    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
                    sa.ForeignKeyConstraint(["endpoint_id"], ["webhook_endpoints.id"], ondelete="CASCADE"),
                    sa.PrimaryKeyConstraint("id"))
    op.create_index("ix_webhook_messages_status_due", "webhook_messages", ["status", "next_attempt_at"])
    op.create_index("ix_webhook_messages_endpoint_id", "webhook_messages", ["endpoint_id"])
    op.create_table("webhook_attempts",
                    sa.Column("id", BIGINT, autoincrement=True, nullable=False),
                    sa.Column("message_id", sa.String(length=40), nullable=False),
                    sa.Column("endpoint_id", sa.String(length=36), nullable=False),
                    sa.Column("job_id", sa.String(length=36), nullable=False),
                    sa.Column("event", sa.String(length=20), nullable=False),
                    sa.Column("attempt", sa.Integer(), nullable=False),
                    sa.Column("status", sa.String(length=10), nullable=False),
                    sa.Column("response_status", sa.Integer(), nullable=True),
                    sa.Column("error", sa.String(length=300), nullable=True),
                    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
                    sa.ForeignKeyConstraint(["endpoint_id"], ["webhook_endpoints.id"], ondelete="CASCADE"),
                    sa.ForeignKeyConstraint(["message_id"], ["webhook_messages.id"], ondelete="CASCADE"),
                    sa.PrimaryKeyConstraint("id"))
    op.create_index("ix_webhook_attempts_endpoint_id_id", "webhook_attempts", ["endpoint_id", "id"])
    op.create_index("ix_webhook_attempts_message_id", "webhook_attempts", ["message_id"])


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_messages")
    op.drop_table("webhook_endpoints")
