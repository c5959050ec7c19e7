"""Just-in-time access: each node's address and labels (``nodes.address``,
``nodes.labels``, set by an operator; access policies select nodes by labels), the
access policy in force (``access_policies``, every version kept), users' access requests
(``access_requests``: who asked for which service, for how long, the approvals, the state)
and the edges a granted request opened on each node (``access_edges``: the grant and
revoke orders).

Revision ID: 0008_access
Revises: 0007_recovery_jobs
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_access"
down_revision = "0007_recovery_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("address", sa.String(45), nullable=True))
        batch.add_column(sa.Column("labels", sa.Text(), nullable=True))  # JSON object
    op.create_table(
        "access_policies",
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("document", sa.Text(), nullable=False),  # the validated policy, JSON
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("set_at", sa.BigInteger(), nullable=False),
        sa.Column("set_by", sa.String(255), nullable=False),
    )
    op.create_table(
        "access_requests",
        sa.Column("request_id", sa.String(36), primary_key=True),
        sa.Column("service", sa.String(63), nullable=False),
        sa.Column("rule", sa.String(63), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("terms", sa.Text(), nullable=False),  # JSON: the rule as decided on
        sa.Column("sub", sa.String(255), nullable=False),
        sa.Column("user_name", sa.String(255), nullable=False),
        sa.Column("groups", sa.Text(), nullable=False),  # JSON list
        sa.Column("source", sa.String(45), nullable=False),
        sa.Column("node_filter", sa.String(63), nullable=True),
        sa.Column("ttl", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("approvals", sa.Text(), nullable=False),  # JSON list of approvers
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("granted_at", sa.BigInteger(), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("ended_at", sa.BigInteger(), nullable=True),
        sa.Column("end_reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_access_requests_status", "access_requests", ["status"])
    op.create_table(
        "access_edges",
        sa.Column("request_id", sa.String(36), primary_key=True),
        sa.Column("node_id", sa.String(63), primary_key=True),
        sa.Column("edge", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("grant_order", sa.String(36), nullable=False),
        sa.Column("revoke_order", sa.String(36), nullable=True),
    )
    op.create_index("ix_access_edges_node_status", "access_edges", ["node_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_access_edges_node_status", "access_edges")
    op.drop_table("access_edges")
    op.drop_index("ix_access_requests_status", "access_requests")
    op.drop_table("access_requests")
    op.drop_table("access_policies")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("labels")
        batch.drop_column("address")
