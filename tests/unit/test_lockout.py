"""The agent's lock-out guard and timed confirmation, without a kernel: where the
controller is, what a confirmation window keeps across a restart, and the config key."""

from __future__ import annotations

from pathlib import Path

import pytest

from aegis_agent.bpf.layout import MAP_SEG_CONFIG, MAP_SEG_EDGES, MAP_SEG_EDGES_LPM, MAP_SEG_MGMT
from aegis_agent.config import ConfigError, parse_config
from aegis_agent.control import parse_request
from aegis_agent.lockout import LockoutError, Unconfirmed, controller_peers, same_policy
from aegis_protocol.commands import parse

pytestmark = pytest.mark.unit


def test_the_controller_is_a_peer_on_its_own_port() -> None:
    assert [str(p) for p in controller_peers("https://192.0.2.7:8443")] == ["192.0.2.7 tcp/8443"]
    assert [str(p) for p in controller_peers("https://192.0.2.7/")] == ["192.0.2.7 tcp/443"]
    assert [str(p) for p in controller_peers("https://localhost:9000")] == ["127.0.0.1 tcp/9000"]


def test_a_controller_that_cannot_be_placed_refuses_the_filter() -> None:
    with pytest.raises(LockoutError, match="cannot resolve the controller's host"):
        controller_peers("https://aegis-no-such-host.invalid:8443")
    with pytest.raises(LockoutError, match="no IPv4 address"):
        controller_peers("https://[2001:db8::7]:8443", ipv6="deny")
    assert controller_peers("https://[2001:db8::7]:8443", ipv6="allow") == []


def _snap(**changes: dict[bytes, bytes]) -> dict[str, dict[bytes, bytes]]:
    base = {MAP_SEG_CONFIG: {b"\0" * 4: b"cfg"}, MAP_SEG_MGMT: {b"peer": b"\1"},
            MAP_SEG_EDGES: {b"edge": b"seen-at-1"}, MAP_SEG_EDGES_LPM: {}}
    return base | changes


def test_a_policy_is_the_same_when_only_traffic_moved() -> None:
    assert same_policy(_snap(), _snap(**{MAP_SEG_EDGES: {b"edge": b"seen-at-2"}}))
    assert not same_policy(_snap(), _snap(**{MAP_SEG_MGMT: {}}))
    assert not same_policy(_snap(), _snap(**{MAP_SEG_EDGES: {}}))
    assert not same_policy(_snap(), _snap(**{MAP_SEG_CONFIG: {b"\0" * 4: b"other"}}))


def test_the_unconfirmed_policy_survives_the_agent(tmp_path: Path) -> None:
    path = tmp_path / "run" / "segment-unconfirmed.json"
    assert Unconfirmed.load(path) is None
    Unconfirmed(1234.5, _snap()).save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert Unconfirmed.load(path) == Unconfirmed(1234.5, _snap())
    Unconfirmed(99.0, None).save(path)
    assert Unconfirmed.load(path) == Unconfirmed(99.0, None)
    path.write_text("{not json")  # unreadable: no filter is the side that cannot lock out
    assert Unconfirmed.load(path) == Unconfirmed(0.0, None)
    Unconfirmed.clear(path)
    Unconfirmed.clear(path)
    assert not path.exists()


@pytest.mark.parametrize(("value", "ok"), [(30, True), (0.5, True), (0, False), (-1, False),
                                           (7200, False), ("soon", False)])
def test_confirm_seconds_is_checked(value: object, ok: bool) -> None:
    text = f"segment: {{interface: eth0, confirm_seconds: {value}}}"
    if ok:
        assert parse_config(text).segment.confirm_seconds == value
    else:
        with pytest.raises(ConfigError, match=r"segment\.confirm_seconds"):
            parse_config(text)
    assert parse_config("segment: {interface: eth0}").segment.confirm_seconds is None


def test_confirm_is_a_control_verb_with_no_arguments() -> None:
    assert parse_request(b'{"cmd": "confirm"}') == ("confirm", {})
    assert parse("confirm", {}).verb == "confirm"
    with pytest.raises(ValueError, match="takes no argument"):
        parse("confirm", {"seconds": 3})
