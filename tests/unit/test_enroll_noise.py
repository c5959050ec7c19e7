"""Bogus enrollment tokens cannot flood the ledger: a source is rate-limited (429 with
Retry-After), unknown-token refusals are one counted record per window, and a known
token's refusal is still recorded on its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from harness_domain import make_controller

from aegis_controller.api.app import create_app
from aegis_controller.domain import Controller
from aegis_controller.enrollment_limits import NoiseCounter
from aegis_controller.errors import Forbidden
from aegis_controller.ledger import Kind
from aegis_protocol import routes
from aegis_protocol.enrollment import EnrollRequest, node_csr
from aegis_protocol.signing import public_key_text

pytestmark = pytest.mark.unit

BOGUS = 300


@pytest.fixture
def ctl(tmp_path: Path) -> Controller:
    return make_controller(tmp_path)


def body(node_id: str, token: str, csr: str) -> dict:
    return {"node_id": node_id, "token": token, "csr_pem": csr,
            "identity_key": public_key_text(Ed25519PrivateKey.generate().public_key())}


def test_bogus_tokens_from_one_source_are_limited_and_counted_not_each_recorded(
        ctl: Controller) -> None:
    ctl.enrollment.issue_token("n1")
    before = sum(1 for _ in ctl.ledger.records())
    csr = node_csr(ec.generate_private_key(ec.SECP256R1()), "n1")
    codes: list[int] = []
    with TestClient(create_app(ctl)) as client:  # one source: "testclient"
        for i in range(BOGUS):
            r = client.post(routes.ENROLL, json=body("n1", f"bogus-token-{i:06d}", csr))
            codes.append(r.status_code)
            if r.status_code == 429:
                assert r.headers["retry-after"].isdigit(), r.headers
                assert "too many enrollment attempts" in r.json()["detail"]
        assert codes.count(403) >= 10 and codes.count(429) >= BOGUS // 2, codes
        assert set(codes) == {403, 429}
        assert sum(1 for _ in ctl.ledger.records()) - before <= 3
        # a known token refused (issued for another node) from another source: recorded
        ctl.enrollment.issue_token("n2")
        token = ctl.enrollment.issue_token("n3")
        with pytest.raises(Forbidden, match="issued for another node"):
            csr2 = node_csr(ec.generate_private_key(ec.SECP256R1()), "n2")
            ctl.enrollment.enroll(EnrollRequest.model_validate(body("n2", token, csr2)),
                                  "192.0.2.7:4000")
    # the app's shutdown recorded the window's count
    noise = [r.body for r in ctl.ledger.records()
             if r.kind == Kind.TOKEN_REFUSED and "count" in r.body]
    assert sum(n["count"] for n in noise) == codes.count(403)
    assert noise[-1]["sources"] == {"testclient": noise[-1]["count"]} or len(noise) > 1
    known = [r.body for r in ctl.ledger.records()
             if r.kind == Kind.TOKEN_REFUSED and "count" not in r.body]
    assert [k["reason"] for k in known] == ["bootstrap token was issued for another node"]
    assert ctl.ledger.verify().ok


def test_a_noise_window_is_recorded_by_the_next_refusal_after_it() -> None:
    noise = NoiseCounter(window=60)
    assert noise.add("a", now=0) is None
    assert noise.add("b", now=30) is None
    done = noise.add("a", now=61)
    assert done is not None and done["count"] == 2 and done["sources"] == {"a": 1, "b": 1}
    rest = noise.flush()
    assert rest is not None and rest["count"] == 1 and rest["sources"] == {"a": 1}
    assert noise.flush() is None
