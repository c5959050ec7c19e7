"""Operators' console rights: ``may_approve`` (approve or reject held recovery jobs, approve
or deny access requests in the console; read-only when false, the default) and ``groups``
(a JSON list: the groups the access policy sees for this operator when it approves an
access request from the console). Existing operators stay read-only in the console.

Revision ID: 0009_operator_rights
Revises: 0008_access
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_operator_rights"
down_revision = "0008_access"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operators") as batch:
        batch.add_column(sa.Column("may_approve", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("groups", sa.Text(), nullable=False,
                                   server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("operators") as batch:
        batch.drop_column("groups")
        batch.drop_column("may_approve")
