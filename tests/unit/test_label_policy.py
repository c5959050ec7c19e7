"""Label policies: the file format and its refusals (each naming the policy and field, and
changing nothing), the compiler (trusted nodes only, never a node to itself, first policy
owns a pair's default), and the controller keeping each node's set in step through the
trust-state transitions: join, suspicion, replacement, quarantine — on the real controller
domain (SQLite) with real enrollment and attestation."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aegis_agent.bpf.policy_edges import PolicyEntry
from aegis_controller.access.policy import PolicyError
from aegis_controller.domain import Controller, open_controller
from aegis_controller.errors import Invalid
from aegis_controller.ledger import init_keys
from aegis_controller.nodes import NodeState
from aegis_controller.segmentation.label_policy import Node, compile_for, load
from aegis_controller.settings import Settings
from aegis_protocol.attestation import AttestationReport, ExpectedProfile, Measurement, SignedReport
from aegis_protocol.commands import parse
from aegis_protocol.enrollment import EnrollRequest, node_csr
from aegis_protocol.signing import public_key_text, sign

pytestmark = pytest.mark.unit

POLICY = """
policies:
  - name: web-db
    from: {role: web}
    to: {role: db}
    ports: [tcp/5432]
    action: allow
    mode: enforce
"""
GOOD = "1" * 64


# -- the format -------------------------------------------------------------------------
def test_a_valid_file_parses_with_defaults() -> None:
    policies = load(POLICY + "  - {name: mon, from: {env: prod}, to: {role: db}, "
                    "ports: [udp/161, ICMP]}\n")
    web, mon = policies.policies
    assert (web.src, web.dst, web.ports, web.action, web.mode) == (
        {"role": "web"}, {"role": "db"}, ("tcp/5432",), "allow", "enforce")
    assert (mon.ports, mon.action, mon.mode) == (("udp/161", "icmp"), "allow", "enforce")
    assert load(json.dumps(policies.document())).digest() == policies.digest()


@pytest.mark.parametrize(("text", "words"), [
    ("policies: {}", "policies: expected a list"),
    ("policies: [{name: a, from: {rack: r1}, to: {role: db}, ports: [tcp/1]}]",
     "policies[0].from.rack: unknown label key (no node carries it"),
    ("policies: [{name: a, from: {role: web}, to: {}, ports: [tcp/1]}]",
     "policies[0].to: expected a mapping"),
    ("policies: [{name: a, from: {role: web}, to: {role: db}, ports: [tcp/70000]}]",
     "policies[0].ports[0]: 'tcp/70000' is not tcp/PORT"),
    ("policies: [{name: a, from: {role: web}, to: {role: db}, ports: [sctp/5]}]",
     "policies[0].ports[0]: 'sctp/5'"),
    ("policies: [{name: a, from: {role: web}, to: {role: db}, ports: []}]",
     "policies[0].ports: expected a non-empty list"),
    ("policies: [{name: a, from: {role: web}, to: {role: db}, ports: [tcp/1], "
     "action: permit}]", "policies[0].action: 'permit' is not allow, drop or log"),
    ("policies: [{name: a, from: {role: web}, to: {role: db}, ports: [tcp/1], "
     "mode: staged}]", "policies[0].mode: 'staged' is not observe or enforce"),
    ("policies: [{name: a, from: {role: web}, to: {role: db}, ports: [tcp/1], prio: 1}]",
     "policies[0].prio: unknown key"),
    ("policies: [{name: a, from: {role: web}, to: {role: db}, ports: [tcp/1]},"
     " {name: a, from: {role: x}, to: {role: y}, ports: [tcp/1]}]",
     "policies[1].name: 'a' is used by policies[0]"),
    # overlapping selectors (env: prod web nodes are role: web nodes too), port in common
    ("policies: [{name: a, from: {role: web}, to: {role: db}, ports: [tcp/5432, tcp/1]},"
     " {name: b, from: {role: web, env: prod}, to: {role: db}, ports: [tcp/5432], "
     "action: drop}]",
     "policies[1]: policy 'b' overlaps policy 'a' (policies[0]) on tcp/5432 with "
     "conflicting actions (allow / drop)"),
])
def test_bad_files_are_refused_naming_the_policy_and_field(text: str, words: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(words)):
        load(text)


def test_disjoint_selectors_or_equal_actions_do_not_conflict() -> None:
    load("policies: [{name: a, from: {role: web, env: prod}, to: {role: db}, ports: [tcp/1]},"
         " {name: b, from: {role: web, env: dev}, to: {role: db}, ports: [tcp/1], "
         "action: drop},"
         " {name: c, from: {role: web}, to: {role: db}, ports: [tcp/2], action: log},"
         " {name: d, from: {env: prod}, to: {role: db}, ports: [tcp/1], action: allow}]")


def test_a_label_key_some_node_carries_is_allowed() -> None:
    load("policies: [{name: a, from: {rack: r1}, to: {role: db}, ports: [tcp/1]}]",
         {"rack"})


# -- the compiler -------------------------------------------------------------------------
def test_compile_covers_trusted_pairs_only_and_never_a_node_to_itself() -> None:
    policies = load(POLICY + "  - {name: web-web, from: {role: web}, to: {role: web}, "
                    "ports: [tcp/80], mode: observe}\n")
    nodes = [Node("db1", "10.0.0.2", {"role": "db"}), Node("web1", "10.0.0.1", {"role": "web"}),
             Node("web2", "10.0.0.3", {"role": "web"})]
    out = compile_for(policies, nodes)
    assert out["db1"] == {"policies": ["web-db=enforce"], "entries": [
        "web-db allow 10.0.0.1 -> 10.0.0.2 tcp/5432", "web-db allow 10.0.0.3 -> 10.0.0.2 tcp/5432",
        "web-db default 10.0.0.1 -> 10.0.0.2", "web-db default 10.0.0.3 -> 10.0.0.2"]}
    assert out["web1"]["entries"] == ["web-web allow 10.0.0.3 -> 10.0.0.1 tcp/80",
                                      "web-web default 10.0.0.3 -> 10.0.0.1"]
    assert out["web1"]["policies"] == ["web-web=observe"]
    # the wire and the agent accept what the compiler makes, icmp included
    parse("segment-policy", out["db1"])
    icmp = compile_for(load("policies: [{name: ping, from: {role: web}, to: {role: db}, "
                            "ports: [icmp]}]"), nodes)["db1"]["entries"]
    assert [str(PolicyEntry.parse(e)) for e in icmp] == icmp == [
        "ping allow 10.0.0.1 -> 10.0.0.2 icmp", "ping allow 10.0.0.3 -> 10.0.0.2 icmp",
        "ping default 10.0.0.1 -> 10.0.0.2", "ping default 10.0.0.3 -> 10.0.0.2"]
    # without web2 (not trusted: not passed in), web1 has no peer of its role
    out = compile_for(policies, nodes[:2])
    assert "web1" not in out and len(out["db1"]["entries"]) == 2


# -- the controller keeps the nodes in step --------------------------------------------------
IDENTITY = {n: Ed25519PrivateKey.generate() for n in ("db1", "web1", "web2")}


@pytest.fixture
def ctl(tmp_path: Path) -> Controller:
    init_keys(tmp_path / "keys")
    return open_controller(Settings.resolve(
        tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", tmp_path / "ledger.anchor.json"))


def attest(ctl: Controller, node: str, digest: str = GOOD) -> str:
    report = AttestationReport(
        node_id=node, nonce=ctl.attestation.challenge(node).nonce,
        measured_at=int(time.time()),
        measurement=Measurement(kernel_release="6.1", boot_id="b", agent_version="0.1.0",
                                golden={"/etc/a": digest}))
    return ctl.attestation.attest(node, SignedReport(
        report=report, signature=sign(IDENTITY[node], report))).state


def join(ctl: Controller, node: str, address: str, role: str) -> None:
    token = ctl.enrollment.issue_token(node)
    ctl.enrollment.enroll(EnrollRequest(
        node_id=node, token=token,
        csr_pem=node_csr(ec.generate_private_key(ec.SECP256R1()), node),
        identity_key=public_key_text(IDENTITY[node].public_key())), "127.0.0.1:1")
    ctl.access.set_node(node, {"role": role}, address, "operator:a")
    ctl.attestation.set_profile(node, ExpectedProfile(golden={"/etc/a": GOOD}), "operator:a")
    assert attest(ctl, node) == NodeState.TRUSTED


def sent(ctl: Controller, node: str) -> list[dict]:
    """The args of every segment-policy order ``node`` was sent, oldest first."""
    with ctl.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT signed FROM orders WHERE node_id = :n AND "
                                    "kind = 'segment-policy' ORDER BY created_at, rowid"),
                            {"n": node}).all()
    return [json.loads(r.signed)["order"]["args"] for r in rows]


def test_the_controller_pushes_on_join_suspicion_and_replacement(ctl: Controller,
                                                                  tmp_path: Path) -> None:
    join(ctl, "db1", "10.0.0.2", "db")
    join(ctl, "web1", "10.0.0.1", "web")
    out = ctl.segment.set_policy(POLICY, "operator:a")
    assert out["version"] == 1 and len(out["pushed"]) == 1  # db1 only: web1 is no 'to'
    assert sent(ctl, "web1") == []
    (first,) = sent(ctl, "db1")
    assert first == {"policies": ["web-db=enforce"], "entries": [
        "web-db allow 10.0.0.1 -> 10.0.0.2 tcp/5432", "web-db default 10.0.0.1 -> 10.0.0.2"]}
    # web1 turns suspect: it drops out of every selector
    assert attest(ctl, "web1", "9" * 64) == NodeState.SUSPECT
    assert sent(ctl, "db1")[-1] == {"policies": [], "entries": []}
    # its replacement, a new node at a new address, is covered once trusted, not before
    token = ctl.enrollment.issue_token("web2")
    ctl.enrollment.enroll(EnrollRequest(
        node_id="web2", token=token,
        csr_pem=node_csr(ec.generate_private_key(ec.SECP256R1()), "web2"),
        identity_key=public_key_text(IDENTITY["web2"].public_key())), "127.0.0.1:1")
    ctl.access.set_node("web2", {"role": "web"}, "10.0.0.7", "operator:a")
    assert len(sent(ctl, "db1")) == 2  # enrolled, labelled: not trusted yet
    ctl.attestation.set_profile("web2", ExpectedProfile(golden={"/etc/a": GOOD}), "operator:a")
    assert attest(ctl, "web2") == NodeState.TRUSTED
    assert sent(ctl, "db1")[-1]["entries"] == ["web-db allow 10.0.0.7 -> 10.0.0.2 tcp/5432",
                                               "web-db default 10.0.0.7 -> 10.0.0.2"]
    assert sent(ctl, "web2") == []  # a source only: nothing to install on it
    # mode switch: a new version, the same entries, the new mode
    n = len(sent(ctl, "db1"))
    ctl.segment.set_mode("web-db", "observe", "operator:a")
    assert len(sent(ctl, "db1")) == n + 1
    assert sent(ctl, "db1")[-1]["policies"] == ["web-db=observe"]
    status = {r["node_id"]: r for r in ctl.segment.status()}
    assert status["db1"]["order_status"] == "pending"
    assert status["db1"]["policies"] == ["web-db=observe"]


def test_a_refused_policy_changes_nothing(ctl: Controller) -> None:
    join(ctl, "db1", "10.0.0.2", "db")
    join(ctl, "web1", "10.0.0.1", "web")
    ctl.segment.set_policy(POLICY, "operator:a")
    before = sent(ctl, "db1")
    records = len(list(ctl.ledger.records()))
    with pytest.raises(Invalid, match=r"label policy: policies\[0\].from.rack: unknown label"):
        ctl.segment.set_policy("policies: [{name: a, from: {rack: r1}, to: {role: db}, "
                               "ports: [tcp/1]}]", "operator:a")
    with pytest.raises(Invalid, match="no label policy 'nope'"):
        ctl.segment.set_mode("nope", "observe", "operator:a")
    assert sent(ctl, "db1") == before
    assert len(list(ctl.ledger.records())) == records
    assert ctl.segment.current()["version"] == 1


def test_a_set_over_one_orders_entries_is_refused_or_kept_never_failing_a_transition(
        ctl: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
    """(The bound lowered from 8192 to 2 entries, so two web nodes are over it.)"""
    from aegis_controller.segmentation import store

    join(ctl, "db1", "10.0.0.2", "db")
    join(ctl, "web1", "10.0.0.1", "web")
    monkeypatch.setattr(store, "MAX_POLICY_ENTRIES", 1)
    with pytest.raises(Invalid, match="node db1: the label policies compile to 2 entries, "
                                      "over the 1 one order carries"):
        ctl.segment.set_policy(POLICY, "operator:a")
    assert sent(ctl, "db1") == []
    monkeypatch.setattr(store, "MAX_POLICY_ENTRIES", 2)
    ctl.segment.set_policy(POLICY, "operator:a")
    assert len(sent(ctl, "db1")) == 1
    join(ctl, "web2", "10.0.0.7", "web")  # db1's set would be 4 entries: kept as it was
    assert ctl.nodes.get("web2")["state"] == NodeState.TRUSTED
    assert len(sent(ctl, "db1")) == 1
