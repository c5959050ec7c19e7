"""Controller state tables (SQLAlchemy Core; created by migration 0002_controller_state),
registered on :data:`aegis_controller.db.metadata`, the one the migrations target."""

from __future__ import annotations

import sqlalchemy as sa

from .db import metadata

nodes = sa.Table(
    "nodes", metadata,
    sa.Column("node_id", sa.String(63), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("enrolled_at", sa.BigInteger()),
    sa.Column("cert_serial", sa.String(64)),
    sa.Column("last_seen", sa.BigInteger()),
    sa.Column("identity_key", sa.String(64)),
    sa.Column("profile", sa.Text()),
    sa.Column("heartbeat_at", sa.BigInteger()),
    sa.Column("inventory", sa.Text()),
    sa.Column("inventory_previous", sa.Text()),  # before its last change (0013)
    sa.Column("inventory_changed_at", sa.BigInteger()),  # (0013)
    sa.Column("measurement", sa.Text()),  # the last attestation's (0003)
    sa.Column("secrets_role", sa.String(63)),  # node role for leased secrets (0006)
    sa.Column("address", sa.String(45)),  # where users reach it (0008)
    sa.Column("labels", sa.Text()),  # JSON object, what access policies select on (0008)
)

# each set of leased secrets a node fetched and reported (0006): what revoking it needs
# (the token's accessor, lease ids, database logins; never a secret) and how that went
secret_grants = sa.Table(
    "secret_grants", metadata,
    sa.Column("grant_id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("node_id", sa.String(63), nullable=False, index=True),
    sa.Column("order_id", sa.String(36), nullable=False),
    sa.Column("approle", sa.String(63), nullable=False),
    sa.Column("accessor", sa.String(128), nullable=False),
    sa.Column("leases", sa.Text(), nullable=False),
    sa.Column("logins", sa.Text(), nullable=False),
    sa.Column("expires_at", sa.BigInteger(), nullable=False),
    sa.Column("fetched_at", sa.BigInteger(), nullable=False),
    sa.Column("revoke_requested_at", sa.BigInteger()),
    sa.Column("revoke_reason", sa.Text()),
    sa.Column("revoked_at", sa.BigInteger()),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("last_outcome", sa.Text()),
)

# a node's certificate rotation until the new certificate is first used (0004): the
# previous certificate stays accepted meanwhile, and the same request gets the same answer
cert_renewals = sa.Table(
    "cert_renewals", metadata,
    sa.Column("node_id", sa.String(63), primary_key=True),
    sa.Column("previous_serial", sa.String(64), nullable=False),
    sa.Column("new_serial", sa.String(64), nullable=False),
    sa.Column("key_sha256", sa.String(64), nullable=False),
    sa.Column("certificate_pem", sa.Text(), nullable=False),
    sa.Column("issued_at", sa.BigInteger(), nullable=False),
)

nonces = sa.Table(
    "attest_nonces", metadata,
    sa.Column("nonce", sa.String(64), primary_key=True),
    sa.Column("node_id", sa.String(63), nullable=False),
    sa.Column("expires_at", sa.BigInteger(), nullable=False),
    sa.Column("used_at", sa.BigInteger()),
)

tokens = sa.Table(
    "bootstrap_tokens", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("node_id", sa.String(63), nullable=False),
    sa.Column("issued_at", sa.BigInteger(), nullable=False),
    sa.Column("expires_at", sa.BigInteger(), nullable=False),
    sa.Column("used_at", sa.BigInteger()),
)

orders = sa.Table(
    "orders", metadata,
    sa.Column("order_id", sa.String(36), primary_key=True),
    sa.Column("node_id", sa.String(63), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("signed", sa.Text(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("expires_at", sa.BigInteger(), nullable=False),
    sa.Column("acked_at", sa.BigInteger()),
    sa.Column("detail", sa.Text()),
    sa.Index("ix_orders_node_status", "node_id", "status"),
)

events = sa.Table(
    "events", metadata,
    sa.Column("node_id", sa.String(63), primary_key=True),
    sa.Column("event_id", sa.String(36), primary_key=True),
    sa.Column("ts_ns", sa.BigInteger(), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("data", sa.Text(), nullable=False),
    sa.Column("received_at", sa.BigInteger(), nullable=False),
    sa.Index("ix_events_kind", "kind"),
)

incidents = sa.Table(
    "incidents", metadata,
    sa.Column("incident_id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("node_id", sa.String(63), nullable=False),
    sa.Column("rule", sa.String(64), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("event_id", sa.String(36), nullable=False),
    sa.Column("summary", sa.Text(), nullable=False),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("order_id", sa.String(36)),
)


operators = sa.Table(  # 0005_operators
    "operators", metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("cert_serial", sa.String(64), nullable=False),  # the newest certificate's
    sa.Column("issued_at", sa.BigInteger(), nullable=False),
    sa.Column("expires_at", sa.BigInteger(), nullable=False),
    sa.Column("revoked_at", sa.BigInteger()),
    # console rights (0009): approve/reject/deny in the console; groups the access policy sees
    sa.Column("may_approve", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("groups", sa.Text(), nullable=False, server_default="[]"),
)


# recovery jobs (0007): one non-terminal job per node at most (partial unique index)
_ACTIVE_JOB = sa.text("state NOT IN ('trusted', 'failed')")
recovery_jobs = sa.Table(
    "recovery_jobs", metadata,
    sa.Column("job_id", sa.String(36), primary_key=True),
    sa.Column("node_id", sa.String(63), nullable=False, index=True),
    sa.Column("cause", sa.String(16), nullable=False),
    sa.Column("state", sa.String(24), nullable=False, index=True),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("flagged_at", sa.Float(), nullable=False),
    sa.Column("started_at", sa.Float()),
    sa.Column("ended_at", sa.Float()),
    sa.Column("failed_step", sa.String(24)),
    sa.Column("error", sa.Text()),
    sa.Column("approved_by", sa.String(128)),
    sa.Column("data", sa.Text(), nullable=False),
    sa.Column("lease_owner", sa.String(128)),
    sa.Column("lease_until", sa.Float()),
    sa.Column("generation", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("step_pgids", sa.Text(), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("updated_at", sa.Float(), nullable=False),
    sa.Index("uq_recovery_jobs_active_node", "node_id", unique=True,
             sqlite_where=_ACTIVE_JOB, postgresql_where=_ACTIVE_JOB),
)

recovery_history = sa.Table(
    "recovery_history", metadata,
    sa.Column("job_id", sa.String(36), primary_key=True),
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("at", sa.Float(), nullable=False),
    sa.Column("state", sa.String(24), nullable=False),
    sa.Column("message", sa.Text(), nullable=False),
    sa.Column("fields", sa.Text(), nullable=False),
)


# just-in-time access (0008): the policy in force (the newest version), users' requests and
# the edges a granted request opened on each node
def document_versions(name: str) -> sa.Table:
    """A table of a policy document's versions (see :mod:`.document_versions`)."""
    return sa.Table(
        name, metadata,
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("set_at", sa.BigInteger(), nullable=False),
        sa.Column("set_by", sa.String(255), nullable=False),
    )


access_policies = document_versions("access_policies")

access_requests = sa.Table(
    "access_requests", metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("service", sa.String(63), nullable=False),
    sa.Column("rule", sa.String(63), nullable=False),
    sa.Column("policy_version", sa.Integer(), nullable=False),
    sa.Column("terms", sa.Text(), nullable=False),
    sa.Column("sub", sa.String(255), nullable=False),
    sa.Column("user_name", sa.String(255), nullable=False),
    sa.Column("groups", sa.Text(), nullable=False),
    sa.Column("source", sa.String(45), nullable=False),
    sa.Column("node_filter", sa.String(63)),
    sa.Column("ttl", sa.Integer(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("approvals", sa.Text(), nullable=False),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("granted_at", sa.BigInteger()),
    sa.Column("expires_at", sa.BigInteger()),
    sa.Column("ended_at", sa.BigInteger()),
    sa.Column("end_reason", sa.Text()),
    # an ssh grant (0009): the user's key, the certificate signed at the grant
    sa.Column("ssh_public_key", sa.Text()),
    sa.Column("ssh_certificate", sa.Text()),
    sa.Column("ssh_serial", sa.String(20)),
    sa.Column("ssh_key_id", sa.String(200)),
    sa.Column("ssh_principal", sa.String(64)),
    sa.Column("ssh_valid_after", sa.BigInteger()),
    sa.Column("ssh_valid_before", sa.BigInteger()),
)

access_edges = sa.Table(
    "access_edges", metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("node_id", sa.String(63), primary_key=True),
    sa.Column("edge", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("grant_order", sa.String(36), nullable=False),
    sa.Column("revoke_order", sa.String(36)),
    sa.Column("krl_order", sa.String(36)),  # revoke-ssh-cert (0011)
    sa.Column("first_packet_ns", sa.BigInteger()),  # as the agent saw it (0012)
    sa.Column("last_packet_ns", sa.BigInteger()),  # from its heartbeats (0012)
    sa.Index("ix_access_edges_node_status", "node_id", "status"),
)

segment_policies = document_versions("segment_policies")  # (0010)

segment_pushes = sa.Table(
    "segment_pushes", metadata,
    sa.Column("node_id", sa.String(63), primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("document", sa.Text(), nullable=False),
    sa.Column("order_id", sa.String(36), nullable=False),
    sa.Column("pushed_at", sa.BigInteger(), nullable=False),
)
