"""Operators on record (issue 12 item 14), in the domain: only an operator's newest,
unrevoked certificate passes the check; issue and revocation are ledger records."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from aegis_controller.domain import Controller, open_controller
from aegis_controller.errors import Invalid, NotFound, Unauthenticated
from aegis_controller.ledger import init_keys
from aegis_controller.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def ctl(tmp_path: Path) -> Controller:
    settings = Settings.resolve(state_dir=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}")
    init_keys(settings.key_dir)
    return open_controller(settings)


def _serial(cert_pem: bytes) -> int:
    return x509.load_pem_x509_certificate(cert_pem).serial_number


def test_only_the_newest_unrevoked_certificate_passes(ctl):
    _key, first = ctl.operators.issue("alice", "operator:root")
    ctl.operators.check("alice", _serial(first))
    _key, second = ctl.operators.issue("alice", "operator:root")
    with pytest.raises(Unauthenticated, match="not the one on record"):
        ctl.operators.check("alice", _serial(first))
    ctl.operators.check("alice", _serial(second))
    ctl.operators.revoke("alice", "operator:root")
    with pytest.raises(Unauthenticated, match="revoked"):
        ctl.operators.check("alice", _serial(second))
    with pytest.raises(Unauthenticated):
        ctl.operators.check("mallory", _serial(second))
    events = [(r.subject, r.body["event"]) for r in ctl.ledger.records()
              if r.subject.startswith("operator:")]
    assert events == [("operator:alice", "operator_certificate_issued")] * 2 + [
        ("operator:alice", "operator_revoked")]


def test_default_lifetime_is_eight_hours_and_bounded(ctl):
    _key, cert = ctl.operators.issue("bob", "operator:root")
    parsed = x509.load_pem_x509_certificate(cert)
    hours = (parsed.not_valid_after_utc - parsed.not_valid_before_utc).total_seconds() / 3600
    assert 8 <= hours <= 8.2
    with pytest.raises(Invalid, match="lifetime"):
        ctl.operators.issue("bob", "operator:root", hours=24 * 30)


def test_bad_names_and_unknown_operators_are_refused_clearly(ctl):
    with pytest.raises(Invalid, match="operator name"):
        ctl.operators.issue("bad name/..", "operator:root")
    with pytest.raises(NotFound, match="no operator 'carol'"):
        ctl.operators.revoke("carol", "operator:root")
