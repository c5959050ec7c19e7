"""A node's certificate rotation is kept until the new certificate is first used, so a
lost rotation reply no longer locks the node out: the previous certificate stays accepted
until then, and the same renewal request is answered with the same certificate.

Revision ID: 0004_cert_renewals
Revises: 0003_node_measurement
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_cert_renewals"
down_revision = "0003_node_measurement"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cert_renewals",
        sa.Column("node_id", sa.String(63), primary_key=True),
        sa.Column("previous_serial", sa.String(64), nullable=False),
        sa.Column("new_serial", sa.String(64), nullable=False),
        sa.Column("key_sha256", sa.String(64), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("issued_at", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cert_renewals")
