"""The access policy as data: what a valid policy decides for users of various groups, and
each malformed policy refused with the field named (the integration tests show the same
refusals through the CLI, and that a refused policy changes nothing)."""

from __future__ import annotations

import json

import pytest

from aegis_controller.access.policy import PolicyError, load
from aegis_protocol.access import parse_duration

POLICY = """
roles:
  developer: [dev, interns]
  admin: [ops-admins]
  security: security
  contractor: [contractors]
services:
  db: {nodes: {role: db}, port: tcp/5432}
  db-ssh: {nodes: {role: db, env: prod}, port: tcp/22, kind: ssh}
rules:
  - {name: developers-db, service: db, roles: [developer], max_ttl: 1h}
  - {name: contractors-never, service: db, roles: [contractor], action: deny}
  - {name: admin-ssh, service: db-ssh, roles: [admin], max_ttl: 30m,
     approvers: [security], approvals: 2}
"""


def test_rules_decide_by_the_users_groups() -> None:
    policy = load(POLICY)
    rule = policy.decide("db", ["interns"])
    assert rule.name == "developers-db" and rule.approvals == 0 and rule.max_ttl == 3600
    ssh = policy.decide("db-ssh", ["ops-admins"])
    assert ssh.approvals == 2 and ssh.terms(policy)["approver_groups"] == ["security"]
    assert ssh.terms(policy)["nodes"] == {"role": "db", "env": "prod"}
    # deny wins over an allow the same user also matches
    with pytest.raises(PolicyError, match="denied to your roles by rule 'contractors-never'"):
        policy.decide("db", ["dev", "contractors"])
    with pytest.raises(PolicyError, match=r"no rule .* lets your roles \(none \(groups: "
                                          r"sales\)\) reach 'db'"):
        policy.decide("db", ["sales"])
    with pytest.raises(PolicyError, match="service: no service 'cache'"):
        policy.decide("cache", ["dev"])
    assert load(json.dumps(policy.document())).digest() == policy.digest()  # stored form
    # a kind ssh service keeps its kind in the stored form and in a request's terms
    assert policy.services["db-ssh"].kind == "ssh" and policy.services["db"].kind == "network"
    assert load(json.dumps(policy.document())).services["db-ssh"].kind == "ssh"
    assert policy.decide("db-ssh", ["ops-admins"]).terms(policy)["kind"] == "ssh"


@pytest.mark.parametrize(("change", "message"), [
    (("role: db}, port: tcp/5432", "rle: db}, port: tcp/5432"),
     "services.db.nodes.rle: unknown label key"),
    (("max_ttl: 1h}", "max_ttl: 2d}"), "rules[0].max_ttl: 172800 s is over"),
    (("max_ttl: 1h}", "max_ttl: soon}"), "rules[0].max_ttl: 'soon' is not a duration"),
    (("roles: [contractor], action: deny", "roles: [developer], action: deny"),
     "rule 'contractors-never' overlaps rule 'developers-db' (rules[0]) on service 'db' "
     "for role(s) developer: conflicting actions (allow / deny)"),
    (("name: contractors-never, service: db, roles: [contractor], action: deny",
      "name: again, service: db, roles: [developer]"), "which one applies is ambiguous"),
    (("approvals: 2", "approvals: 3"), "rules[2].approvals: 3 is not 0, 1 or 2"),
    (("approvers: [security], approvals: 2", "approvals: 1"),
     "rules[2].approvers: 1 approval(s) needed but no approver role named"),
    (("approvers: [security]", "approvers: [auditors]"),
     "rules[2].approvers: 'auditors' is not a role of this policy"),
    (("service: db-ssh", "service: cache"), "rules[2].service: 'cache' is not a service"),
    (("port: tcp/22", "port: sctp/22"), "services.db-ssh.port: 'sctp/22' is not PROTO/PORT"),
    (("port: tcp/22", "port: tcp/70000"), "services.db-ssh.port: 'tcp/70000'"),
    (("action: deny", "action: maybe"), "rules[1].action: 'maybe' is not allow or deny"),
    (("kind: ssh", "kind: telnet"), "services.db-ssh.kind: 'telnet' is not network or ssh"),
    (("port: tcp/22, kind: ssh", "port: udp/22, kind: ssh"),
     "services.db-ssh.kind: ssh needs a tcp port, not udp/22"),
    (("rules:", "rulez:"), "policy.rulez: unknown key"),
    (("{name: developers-db, ", "{name: developers-db, when: never, "),
     "rules[0].when: unknown key"),
])
def test_malformed_policies_are_refused_naming_the_field(change: tuple[str, str],
                                                         message: str) -> None:
    old, new = change
    assert old in POLICY
    with pytest.raises(PolicyError) as e:
        load(POLICY.replace(old, new, 1))
    assert message in str(e.value)


def test_label_keys_nodes_carry_are_known_and_yaml_errors_are_named() -> None:
    text = POLICY.replace("role: db}, port: tcp/5432", "tier: data}, port: tcp/5432")
    with pytest.raises(PolicyError, match=r"services\.db\.nodes\.tier: unknown label key"):
        load(text)
    assert load(text, {"tier"}).services["db"].nodes == {"tier": "data"}
    with pytest.raises(PolicyError, match="not valid YAML"):
        load("roles: [unclosed")
    with pytest.raises(PolicyError, match="policy: expected a mapping"):
        load("- a list")


def test_durations() -> None:
    assert [parse_duration(v) for v in ("90s", "15m", "1h", "2d", "45", 7)] == \
        [90, 900, 3600, 172800, 45, 7]
    for bad in ("15 minutes", "-1m", "0", "", "1.5h", True):
        with pytest.raises(ValueError, match="ttl"):
            parse_duration(bad, "ttl")  # type: ignore[arg-type]
