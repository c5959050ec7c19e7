"""The segmentation filter cannot lock a node out: the controller the agent reports to
stays reachable whatever the management list says, and with ``segment.confirm_seconds``
a policy applied at start is reverted unless ``aegis-agent confirm`` comes in time.

Real daemon in namespace b of a veth pair, real TCP from namespace a (192.0.2.1), the
fixtures of test_agent_daemon (per-run names, everything removed afterwards).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_agent_daemon import Daemon, _wait_for, daemon_lab

from aegis_agent.control import call
from harness import NetnsPair

pytestmark = pytest.mark.integration

# long enough for the checks between start and confirm on a loaded 2-core machine (the
# background lane runs beside these tests): at 2 s a slow `aegis-agent status` missed it
CONFIRM = 6.0


@pytest.fixture
def daemon(netns: NetnsPair) -> Iterator[Daemon]:
    yield from daemon_lab(netns)


def _configure(d: Daemon, **segment: object) -> None:
    cfg = yaml.safe_load(d.config.read_text())
    cfg["segment"].update(segment)
    d.config.write_text(yaml.safe_dump(cfg))


def _controller(d: Daemon, url: str) -> None:
    cfg = yaml.safe_load(d.config.read_text())
    ca = d.root / "ca.pem"
    ca.write_text("")  # never used: no test here gets as far as TLS
    cfg["controller"] = {"url": url, "ca_file": str(ca), "token_file": str(d.root / "token"),
                         "state_dir": str(d.root / "state"), "interval": 3600}
    d.config.write_text(yaml.safe_dump(cfg))


def _what(d: Daemon) -> list[str]:
    return [e["data"].get("what") for e in d.events() if e["kind"] == "agent"]


def test_unconfirmed_filter_is_detached_when_the_time_is_up(daemon: Daemon) -> None:
    _configure(daemon, confirm_seconds=CONFIRM)
    lab = daemon.lab
    lab.listen("b", "192.0.2.2", 8080)
    daemon.start()
    assert not lab.reachable(8080)  # default drop, as applied
    _rc, status, _e = daemon.cli("status")
    assert 0 < status["segment_unconfirmed_s"] <= CONFIRM
    assert _wait_for(lambda: lab.reachable(8080), CONFIRM + 5)  # nobody confirmed
    _rc, status, _e = daemon.cli("status")
    assert status["segment"] is None and status["segment_unconfirmed_s"] is None
    assert not Path(lab.pin).exists()
    assert "segment_reverted" in _what(daemon)
    assert daemon.proc is not None and daemon.proc.poll() is None  # the agent runs on


def test_confirmed_filter_stays(daemon: Daemon) -> None:
    _configure(daemon, confirm_seconds=CONFIRM)
    lab = daemon.lab
    lab.listen("b", "192.0.2.2", 8080)
    daemon.start()
    _rc, out, _e = daemon.cli("confirm")
    assert out == {"confirmed": True, "detail": "segment policy kept"}
    assert daemon.cli("confirm")[1] == {"confirmed": False, "detail": "nothing to confirm"}
    assert not _wait_for(lambda: lab.reachable(8080), CONFIRM + 2)
    _rc, status, _e = daemon.cli("status")
    assert status["segment"]["attached"] is True and status["segment_unconfirmed_s"] is None
    assert "segment_reverted" not in _what(daemon)


def test_a_changed_policy_that_cuts_ssh_goes_back_to_the_confirmed_one(daemon: Daemon) -> None:
    """Restart with a management list that drops the SSH peer: unconfirmed, the previous
    list comes back and SSH flows again; the filter stays attached throughout."""
    _configure(daemon, confirm_seconds=CONFIRM)
    lab = daemon.lab
    lab.listen("b", "192.0.2.2", 2222)
    lab.listen("b", "192.0.2.2", 8080)
    daemon.start()
    daemon.cli("confirm")
    assert lab.reachable(2222) and not lab.reachable(8080)  # 192.0.2.1 tcp/2222 is management
    assert daemon.stop() == 0
    _configure(daemon, management=[])
    daemon.start()
    assert not lab.reachable(2222)  # the new policy cuts the management path
    assert _wait_for(lambda: lab.reachable(2222), CONFIRM + 5)
    assert not lab.reachable(8080)  # the filter is still there: only the policy went back
    _rc, status, _e = daemon.cli("status")
    assert status["segment"]["management"] == ["192.0.2.1 tcp/2222"]


def test_an_agent_restarted_inside_the_window_still_reverts(daemon: Daemon) -> None:
    _configure(daemon, confirm_seconds=CONFIRM)
    lab = daemon.lab
    lab.listen("b", "192.0.2.2", 8080)
    daemon.start()
    daemon.stop(signal.SIGKILL)  # dies before the deadline: its timer dies with it
    daemon.start()
    assert _wait_for(lambda: lab.reachable(8080), CONFIRM + 5)
    # traffic flows once the links are gone; the pins go just after, in the same loop
    # callback: a status answer (served by that loop) comes only when the revert is done
    _rc, status, _e = daemon.cli("status")
    assert status["segment"] is None and status["segment_unconfirmed_s"] is None
    assert not Path(lab.pin).exists()
    assert "segment_reverted" in _what(daemon)


def test_the_controller_stays_reachable_under_default_drop_and_any_quarantine(
        daemon: Daemon) -> None:
    lab = daemon.lab
    lab.listen("a", "192.0.2.1", 8443)  # the controller's port
    lab.listen("a", "192.0.2.1", 9090)  # anything else on the same host
    _controller(daemon, "https://192.0.2.1:8443")
    daemon.start()
    assert lab.reachable(8443, frm="b") and lab.reachable(9090, frm="b")  # own flows
    _rc, status, _e = daemon.cli("status")
    assert "192.0.2.1 tcp/8443" in status["segment"]["management"]
    # a quarantine whose list leaves the controller out (an order, a rule, the CLI)
    sock = daemon.root / "run" / "agent.sock"
    out = call(sock, "quarantine", management=["192.0.2.1 tcp/2222"])
    assert out["quarantine"] is True
    assert sorted(out["management"]) == ["192.0.2.1 tcp/2222", "192.0.2.1 tcp/8443"]
    assert lab.reachable(8443, frm="b")  # the way back in stays open
    assert not lab.reachable(9090, frm="b")  # everything else is cut


def test_a_controller_that_cannot_be_placed_refuses_the_filter(daemon: Daemon) -> None:
    _controller(daemon, "https://aegis-no-such-host.invalid:8443")
    with pytest.raises(AssertionError, match="agent exited 1") as e:
        daemon.start()
    assert "cannot resolve the controller's host 'aegis-no-such-host.invalid'" in str(e.value)
    daemon.proc = None
    assert not Path(daemon.lab.pin).exists()  # nothing attached


def test_configured_break_glass_peers_stay_in_every_mode(daemon: Daemon) -> None:
    """segment.management (CIDR-scoped break-glass peers, the play's SSH source) is kept
    like the controller: under the default drop, in observe mode, and in a quarantine
    whose own list leaves it out (issue 15 part 6)."""
    lab = daemon.lab
    lab.listen("b", "192.0.2.2", 2222)  # the break-glass service (SSH stand-in)
    lab.listen("b", "192.0.2.2", 8080)  # anything else
    _configure(daemon, management=["192.0.2.0/30 tcp/2222"])
    daemon.start()
    assert lab.reachable(2222) and not lab.reachable(8080)  # default drop
    sock = daemon.root / "run" / "agent.sock"
    out = call(sock, "quarantine", management=["198.51.100.9 tcp/22"])
    assert out["quarantine"] is True
    assert sorted(out["management"]) == ["192.0.2.0/30 tcp/2222", "198.51.100.9 tcp/22"]
    assert lab.reachable(2222)  # the way in stays open in quarantine
    assert not lab.reachable(8080)
    call(sock, "release")
    out = call(sock, "quarantine", management=[])  # an empty list cannot drop it either
    assert out["management"] == ["192.0.2.0/30 tcp/2222"]
    assert lab.reachable(2222)
