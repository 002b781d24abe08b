"""The offline jobs table (model: ``service.jobs.store.JobRow``), with a worker heartbeat.

Before this revision the job store made ``jobs`` itself with ``create_all`` on first use, so a
database may already hold it (without ``heartbeat_at``): that table and its rows are kept, and
only what it lacks is added.

Revision ID: 0003
Revises: 0002
Create Date: 2025-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

INDEXES = {"ix_jobs_kind": ["kind"], "ix_jobs_state": ["state"]}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("jobs"):
        op.create_table(
            "jobs",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("kind", sa.String(64), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("params", sa.JSON, nullable=False),
            sa.Column("progress", sa.Float, nullable=False),
            sa.Column("message", sa.String(1024), nullable=False),
            sa.Column("error", sa.Text, nullable=False),
            sa.Column("artifacts", sa.JSON, nullable=False),
            sa.Column("cancel_requested", sa.Boolean, nullable=False),
            sa.Column("worker", sa.String(128), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        )
        for name, cols in INDEXES.items():
            op.create_index(name, "jobs", cols)
        return
    # made by the job store's create_all: adopt it, keeping its rows
    columns = {c["name"] for c in inspector.get_columns("jobs")}
    if "heartbeat_at" not in columns:
        op.add_column("jobs", sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    present = {ix["name"] for ix in inspector.get_indexes("jobs")}
    for name, cols in INDEXES.items():
        if name not in present:
            op.create_index(name, "jobs", cols)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, "jobs")
    op.drop_table("jobs")
