"""Policy rules that match a data field by prefix (``match_prefix``): "any exec from a
world-writable directory" as one rule, and the errors a bad one gets at load."""

from __future__ import annotations

import pytest

from aegis_agent.config import ConfigError, parse_config
from aegis_agent.policy import Policy
from aegis_protocol.events import Event

pytestmark = pytest.mark.unit

WRITABLE = """
policy:
  - name: exec-from-writable-dir
    kind: exec
    match_prefix: {filename: [/tmp/, /var/tmp/, /dev/shm/]}
    action: deny
"""


def _exec(**data: object) -> Event:
    return Event(ts_ns=1, kind="exec", data={"pid": 7, "dev": 1, "ino": 2, **data})  # type: ignore[arg-type]


def _fired(pol: Policy, event: Event) -> list[str]:
    return [d.rule for d in pol.evaluate(event)]


def test_a_filename_under_any_listed_prefix_matches() -> None:
    pol = Policy(parse_config(WRITABLE).policy)
    for name in ("/tmp/x", "/tmp/a/b/c", "/var/tmp/.hidden", "/dev/shm/payload"):
        assert _fired(pol, _exec(filename=name)) == ["exec-from-writable-dir"], name
    for name in ("/usr/bin/touch", "/tmpfoo/x", "/home/u/tmp/x", "tmp/x", "/var/tmpx"):
        assert _fired(pol, _exec(filename=name)) == [], name


def test_a_missing_or_non_string_field_never_matches_a_prefix() -> None:
    pol = Policy(parse_config("""
policy:
  - {name: p, kind: exec, match_prefix: {comm: ["1"]}, action: log}
""").policy)
    assert _fired(pol, _exec()) == []  # no comm
    assert _fired(pol, _exec(comm=12)) == []  # an int is not "12"
    assert _fired(pol, _exec(comm="12")) == ["p"]


def test_every_listed_field_must_match_together_with_match() -> None:
    pol = Policy(parse_config("""
policy:
  - name: root-from-tmp
    kind: [exec, exec_denied]
    match: {uid: [0]}
    match_prefix: {filename: [/tmp/], comm: [evil, bad]}
    action: alert
""").policy)
    assert _fired(pol, _exec(filename="/tmp/evil", comm="evil", uid=0)) == ["root-from-tmp"]
    assert _fired(pol, _exec(filename="/tmp/bad2", comm="bad2", uid=0)) == ["root-from-tmp"]
    assert _fired(pol, _exec(filename="/tmp/evil", comm="evil", uid=1000)) == []  # match
    assert _fired(pol, _exec(filename="/usr/evil", comm="evil", uid=0)) == []  # filename
    assert _fired(pol, _exec(filename="/tmp/x", comm="x", uid=0)) == []  # comm
    ev = Event(ts_ns=1, kind="connect", data={"filename": "/tmp/evil", "comm": "evil", "uid": 0})
    assert _fired(pol, ev) == []  # kind


def test_a_prefix_rule_with_a_threshold_counts_matching_events_only() -> None:
    pol = Policy(parse_config("""
policy:
  - name: burst
    kind: exec
    match_prefix: {filename: [/dev/shm/]}
    threshold: {count: 2, seconds: 10, by: uid}
    action: alert
""").policy)
    assert pol.evaluate(_exec(filename="/dev/shm/a", uid=5), now=0) == []
    assert pol.evaluate(_exec(filename="/usr/bin/a", uid=5), now=1) == []  # not counted
    assert pol.evaluate(_exec(filename="/dev/shm/b", uid=6), now=2) == []  # another key
    (d,) = pol.evaluate(_exec(filename="/dev/shm/c", uid=5), now=3)
    assert d.rule == "burst" and d.key == "5"


@pytest.mark.parametrize(("rule", "expected"), [
    ("match_prefix: {filename: []}",
     "policy[0].match_prefix: filename: no prefixes given, so the rule could never match"),
    ("match_prefix: {filename: [/tmp/, '']}",
     "policy[0].match_prefix: filename: an empty prefix matches every value; give the "
     "start the value must have, e.g. /tmp/"),
    ("match_prefix: {'': [/tmp/]}", "policy[0].match_prefix: a field name is empty"),
    ("match_prefix: {filename: /tmp/}", "policy[0].match_prefix.filename: Input should be "
     "a valid list"),
    ("match_prefix: {filename: [7]}", "policy[0].match_prefix.filename[0]: Input should be "
     "a valid string"),
    ("match_prefix: [/tmp/]", "policy[0].match_prefix: Input should be a valid dictionary"),
    ("match_prefx: {filename: [/tmp/]}", "policy[0].match_prefx: unknown key"),
])
def test_a_bad_match_prefix_is_a_config_error_naming_the_rule(rule: str,
                                                                expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(f"policy:\n  - {{name: r, kind: exec, action: deny, {rule}}}\n",
                     "agent.yaml")
    assert expected in str(err.value), str(err.value)
    assert str(err.value).startswith("agent.yaml: invalid agent configuration")
