"""Egress by domain (issue 15 part 5) on the controller side: ``to_fqdns`` entries of the
label policy file, their refusals (each naming the policy and field, changing nothing),
the compile into the ``segment-policy`` order of each node the entry's ``from`` selects,
and the push through the real controller domain (SQLite); plus the name-pattern grammar
both sides share (``aegis_protocol.fqdn``)."""

from __future__ import annotations

import json
import re

import pytest
from test_label_policy import POLICY, ctl, join, sent  # noqa: F401

from aegis_agent.bpf.fqdn import checked
from aegis_controller.access.policy import PolicyError
from aegis_controller.domain import Controller
from aegis_controller.errors import Invalid
from aegis_controller.segmentation.label_policy import Node, compile_for, load
from aegis_protocol.commands import parse
from aegis_protocol.fqdn import FqdnError, FqdnRule, Resolver, check_pattern, matches

pytestmark = pytest.mark.unit

EGRESS = """
  - name: web-out
    from: {role: web}
    to_fqdns: [API.example.test., "*.pkg.example.test"]
    ports: [tcp/443]
    resolvers: [10.0.0.53]
    mode: observe
"""


def test_patterns_match_one_label_under_a_wildcard_and_names_exactly() -> None:
    assert check_pattern("API.Example.test.") == "api.example.test"
    assert matches("api.example.test", "API.example.test.")
    assert not matches("api.example.test", "x.api.example.test")
    assert matches("*.pkg.example.test", "deb.pkg.example.test.")
    assert not matches("*.pkg.example.test", "pkg.example.test")
    assert not matches("*.pkg.example.test", "a.b.pkg.example.test")
    for bad, why in (("a*.example.test", "'*' may only"), ("", "it is empty"),
                     ("*", "'*' may only"), ("a..b", "empty label"),
                     ("-a.test", "starts or ends with '-'"), ("x" * 64 + ".test", "63"),
                     (5, "is not a DNS name")):
        with pytest.raises(FqdnError, match=re.escape(why)):
            check_pattern(bad)
    assert str(FqdnRule.parse("p *.a.test any")) == "p *.a.test any"
    assert str(Resolver.parse("p 10.0.0.53")) == "p 10.0.0.53"


def test_a_to_fqdns_entry_parses_with_defaults_and_round_trips() -> None:
    policies = load(POLICY + EGRESS + "  - {name: any-port, from: {env: prod}, "
                    "to_fqdns: [repo.example.test], resolvers: [10.0.0.54]}\n")
    _db, out, anyport = policies.policies
    assert (out.src, out.fqdns, out.ports, out.resolvers, out.action, out.mode) == (
        {"role": "web"}, ("api.example.test", "*.pkg.example.test"), ("tcp/443",),
        ("10.0.0.53",), "allow", "observe")
    assert (anyport.ports, anyport.mode) == (("any",), "enforce")
    assert load(json.dumps(policies.document())).digest() == policies.digest()
    assert policies.document()["policies"][1]["to_fqdns"] == ["api.example.test",
                                                               "*.pkg.example.test"]
    assert policies.with_mode("web-out", "enforce").policies[1].fqdns == out.fqdns


@pytest.mark.parametrize(("entry", "words"), [
    ("{name: e, from: {role: web}, to: {role: db}, to_fqdns: [a.test], resolvers: [1.1.1.1]}",
     "policies[0]: give 'to' (nodes by label) or 'to_fqdns'"),
    ("{name: e, from: {role: web}, to_fqdns: [a*.b.test], resolvers: [1.1.1.1]}",
     "policies[0].to_fqdns[0]: 'a*.b.test' is not a DNS name pattern: '*' may only"),
    ("{name: e, from: {role: web}, to_fqdns: [''], resolvers: [1.1.1.1]}",
     "policies[0].to_fqdns[0]: '' is not a DNS name pattern: it is empty"),
    ("{name: e, from: {role: web}, to_fqdns: [], resolvers: [1.1.1.1]}",
     "policies[0].to_fqdns: expected a non-empty list"),
    ("{name: e, from: {role: web}, to_fqdns: [a.test, A.test.], resolvers: [1.1.1.1]}",
     "policies[0].to_fqdns[1]: 'A.test.' is listed twice"),
    ("{name: e, from: {role: web}, to_fqdns: [a.test]}",
     "policies[0].resolvers: expected a non-empty list"),
    ("{name: e, from: {role: web}, to_fqdns: [a.test], resolvers: [dns.test]}",
     "policies[0].resolvers[0]: 'dns.test' is not an IPv4 address"),
    ("{name: e, from: {role: web}, to_fqdns: [a.test], resolvers: [1.1.1.1], ports: [icmp]}",
     "policies[0].ports[0]: 'icmp' is not tcp/PORT or udp/PORT"),
    ("{name: e, from: {role: web}, to_fqdns: [a.test], resolvers: [1.1.1.1], action: drop}",
     "policies[0].action: 'drop': a to_fqdns policy allows"),
    ("{name: e, from: {rack: r1}, to_fqdns: [a.test], resolvers: [1.1.1.1]}",
     "policies[0].from.rack: unknown label key"),
    ("{name: e, from: {role: web}, to: {role: db}, ports: [tcp/1], resolvers: [1.1.1.1]}",
     "policies[0].resolvers: only a to_fqdns policy has resolvers"),
])
def test_bad_entries_are_refused_naming_the_policy_and_field(entry: str, words: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(words)):
        load(f"policies: [{entry}]")


def test_compile_gives_the_from_nodes_their_rules_and_the_agent_takes_them() -> None:
    nodes = [Node("db1", "10.0.0.2", {"role": "db"}), Node("web1", "10.0.0.1", {"role": "web"})]
    out = compile_for(load(POLICY + EGRESS), nodes)
    assert out["web1"] == {"policies": ["web-out=observe"], "entries": [],
                           "fqdns": ["web-out api.example.test tcp/443",
                                     "web-out *.pkg.example.test tcp/443"],
                           "resolvers": ["web-out 10.0.0.53"]}
    assert "fqdns" not in out["db1"]  # its label entries' order is as before (same digest)
    cmd = parse("segment-policy", out["web1"])
    rules, servers = checked({"web-out": "observe"}, cmd.fqdns, cmd.resolvers)
    assert [str(r) for r in rules] == sorted(out["web1"]["fqdns"])
    assert [str(s) for s in servers] == out["web1"]["resolvers"]


def test_the_controller_pushes_fqdn_rules_and_shows_them(ctl: Controller) -> None:  # noqa: F811
    join(ctl, "db1", "10.0.0.2", "db")
    join(ctl, "web1", "10.0.0.1", "web")
    ctl.segment.set_policy(POLICY, "operator:a")
    db_before = sent(ctl, "db1")
    ctl.segment.set_policy("policies:" + POLICY.split("policies:", 1)[1] + EGRESS,
                           "operator:a")
    assert sent(ctl, "db1") == db_before  # its set did not change: not sent again
    (web,) = sent(ctl, "web1")
    assert web["fqdns"] == ["web-out api.example.test tcp/443",
                            "web-out *.pkg.example.test tcp/443"]
    shown = ctl.segment.current()
    assert shown["policies"][1]["to_fqdns"] == ["api.example.test", "*.pkg.example.test"]
    ctl.segment.set_mode("web-out", "enforce", "operator:a")
    assert sent(ctl, "web1")[-1]["policies"] == ["web-out=enforce"]
    # refused: nothing changes
    with pytest.raises(Invalid, match=r"policies\[1\].to_fqdns\[0\]"):
        ctl.segment.set_policy("policies:" + POLICY.split("policies:", 1)[1]
                               + EGRESS.replace("API.example.test.", "a*.b"), "operator:a")
    assert len(sent(ctl, "web1")) == 2 and ctl.segment.current()["version"] == 3
