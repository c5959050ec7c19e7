"""Recovery jobs (issue 14): one row per job replacing a quarantined node, with its state,
its durable ``data`` (JSON, never a secret), the replica's lease on it (``lease_owner``,
``lease_until``) and the fencing ``generation`` every write of the lease holder checks,
and the process groups its current step started (``step_pgids``); ``recovery_history``
holds each job's progress lines. A partial unique index keeps at most one job that is
not ``trusted`` or ``failed`` per node (SQLite and PostgreSQL both have partial indexes).

Revision ID: 0007_recovery_jobs
Revises: 0006_node_secrets
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_recovery_jobs"
down_revision = "0006_node_secrets"
branch_labels = None
depends_on = None

#: The states a job ends in (aegis_controller.recovery.states.TERMINAL); written out here
#: because a migration must not change when the code it ships with does.
_ACTIVE = sa.text("state NOT IN ('trusted', 'failed')")


def upgrade() -> None:
    op.create_table(
        "recovery_jobs",
        sa.Column("job_id", sa.String(36), primary_key=True),
        sa.Column("node_id", sa.String(63), nullable=False),
        sa.Column("cause", sa.String(16), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("flagged_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("failed_step", sa.String(24), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("approved_by", sa.String(128), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),  # JSON object
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("step_pgids", sa.Text(), nullable=False),  # JSON list
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_recovery_jobs_node_id", "recovery_jobs", ["node_id"])
    op.create_index("ix_recovery_jobs_state", "recovery_jobs", ["state"])
    op.create_index("uq_recovery_jobs_active_node", "recovery_jobs", ["node_id"], unique=True,
                    sqlite_where=_ACTIVE, postgresql_where=_ACTIVE)
    op.create_table(
        "recovery_history",
        sa.Column("job_id", sa.String(36), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("fields", sa.Text(), nullable=False),  # JSON object
    )


def downgrade() -> None:
    op.drop_table("recovery_history")
    op.drop_index("uq_recovery_jobs_active_node", "recovery_jobs")
    op.drop_index("ix_recovery_jobs_state", "recovery_jobs")
    op.drop_index("ix_recovery_jobs_node_id", "recovery_jobs")
    op.drop_table("recovery_jobs")
