"""Operator certificates are on record and can be revoked (issue 12 item 14): a real
`aegis-controller serve`, operator certificates from `operator-cert`, `operator revoke`
through the CLI while the server runs."""

from __future__ import annotations

import json

import pytest
from cryptography import x509

from harness_controller import Server, enroll, new_node, operator_client

pytestmark = pytest.mark.integration

ORDER = {"node_id": "o1", "kind": "attest"}


def _operator_records(server: Server) -> list[dict]:
    out = server.ctl("ledger", "show")
    return [r for r in map(json.loads, out.stdout.splitlines())
            if r["subject"].startswith("operator:")]


def test_a_revoked_operator_certificate_is_refused_and_the_revocation_recorded(
        server: Server) -> None:
    node = new_node(server, "o1")
    assert enroll(server, node, server.token("o1")).status_code == 200
    with operator_client(server, "alice") as alice:
        assert alice.post("/v1/orders", json=ORDER).status_code == 201
        out = server.ctl("operator", "revoke", "alice")
        assert out.returncode == 0, out.stderr
        r = alice.post("/v1/orders", json=ORDER)
        assert r.status_code == 401 and "revoked" in r.json()["detail"], r.text
    events = [(r["kind"], r["body"]["event"]) for r in _operator_records(server)]
    assert events == [("access_grant", "operator_certificate_issued"),
                      ("access_grant", "operator_revoked")]
    assert _operator_records(server)[1]["actor"].startswith("operator:")
    # Revoking someone unknown says so; a new certificate is an explicit, recorded re-grant.
    out = server.ctl("operator", "revoke", "nobody")
    assert out.returncode != 0 and "no operator 'nobody'" in out.stderr
    with operator_client(server, "alice") as again:
        assert again.post("/v1/orders", json=ORDER).status_code == 201


def test_a_replaced_operator_certificate_is_refused(server: Server) -> None:
    node = new_node(server, "o1")
    assert enroll(server, node, server.token("o1")).status_code == 200
    old = operator_client(server, "bob")
    old_pem = (server.state / "ops/operator-bob.pem").read_bytes()
    with operator_client(server, "bob") as new:  # issues bob a new certificate
        assert new.post("/v1/orders", json=ORDER).status_code == 201
    with old:  # it loaded bob's first certificate before the second was issued
        r = old.post("/v1/orders", json=ORDER)
    assert r.status_code == 401 and "not the one on record" in r.json()["detail"], r.text
    cert = x509.load_pem_x509_certificate(old_pem)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime.total_seconds() <= 8 * 3600 + 600  # 8 h (and 5 min of clock skew)
