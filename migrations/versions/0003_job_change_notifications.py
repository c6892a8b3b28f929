"""PostgreSQL: NOTIFY rlprune_jobs with the job's id when a job changes (the API's job cache listens)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 08:00:00.000000

A trigger rather than a NOTIFY beside each write: every writer (API, worker, reaper, an operator's
UPDATE) is covered without having to remember it. SQLite needs nothing: the API watches its
data_version instead.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("""
        CREATE FUNCTION rlprune_job_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('rlprune_jobs', OLD.id);
            RETURN NULL;
        END $$""")
    op.execute("""
        CREATE TRIGGER jobs_changed AFTER UPDATE OR DELETE ON jobs
        FOR EACH ROW EXECUTE FUNCTION rlprune_job_changed()""")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER jobs_changed ON jobs")
    op.execute("DROP FUNCTION rlprune_job_changed()")
