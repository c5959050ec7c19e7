"""The agent's config validation, local policy and spool framing (no kernel needed)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from aegis_agent.config import ConfigError, parse_config
from aegis_agent.control import parse_request
from aegis_agent.policy import Policy
from aegis_agent.spool import HEADER, Spool
from aegis_protocol.events import Event
from harness import FUTURE_EVENT, foreign_record

pytestmark = pytest.mark.unit


def _ev(kind: str = "exec", **data: object) -> Event:
    return Event(ts_ns=1, kind=kind, data=data)  # type: ignore[arg-type]


# -- config ----------
def test_empty_config_gives_defaults() -> None:
    cfg = parse_config("")
    assert cfg.segment.interface is None and cfg.monitors.exec is True
    assert str(cfg.control.socket) == "/run/aegis/agent.sock"


@pytest.mark.parametrize(("text", "expected"), [
    ("segment: {mode: enforced}", "segment.mode: Input should be 'enforce' or 'observe'"),
    ("segmnet: {}", "segmnet: unknown key"),
    ("segment: {edges: ['10.0.0.1 => x']}", "segment.edges[0]"),
    ("segment: {management: ['192.0.2.1 tcp/22', 'any']}",
     "segment.management[1]: bad management peer 'any'"),
    ("segment: {management: ['192.0.2.1 tcp/99999']}", "segment.management[0]: bad"),
    ("spool: {max_bytes: 10}", "spool.max_bytes: Input should be greater than or equal"),
    ("policy: [{name: r, kind: exex, action: deny}]", "policy[0].kind"),
    ("policy: [{name: r, kind: exec, action: nuke}]", "policy[0].action"),
    ("- a\n- b", "must be a YAML mapping"),
    ("segment: {mode: [", "not valid YAML"),
    ("node_id: n\ncontroller: {url: 'https://c', ca_file: /c.pem, vault: {url: 'bao:8200'}}",
     "controller.vault.url: the vault url 'bao:8200' is not a URL"),
    ("node_id: n\ncontroller: {url: 'https://c', ca_file: /c.pem, "
     "vault: {url: 'http://10.0.0.5:8200'}}",
     "controller.vault.url: the vault url 'http://10.0.0.5:8200' is plain http"),
    ("node_id: n\ncontroller: {url: 'http://10.0.0.2:8443', ca_file: /c.pem}",
     "controller.url: String should match pattern '^https://'"),
    ("node_id: n\ncontroller: {url: 'https://c', ca_file: /c.pem, vault: {adr: 'x'}}",
     "controller.vault.adr: unknown key"),
])
def test_bad_config_names_the_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "agent.yaml")
    assert expected in str(err.value), str(err.value)
    assert str(err.value).startswith("agent.yaml: invalid agent configuration")


def test_plain_http_vault_url_is_accepted_on_loopback_only() -> None:
    for url in ("http://127.0.0.1:8200", "http://localhost:8200", "http://[::1]:8200",
                "https://bao.example:8200"):
        cfg = parse_config("node_id: n\ncontroller: {url: 'https://c', ca_file: /c.pem, "
                           f"vault: {{url: '{url}'}}}}")
        assert cfg.controller is not None and cfg.controller.vault is not None
        assert cfg.controller.vault.url == url


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("segment: {mode: x, arp: y}\nwatchdog: {grace: 0}")
    assert len(err.value.problems) == 3


# -- control requests ----------
@pytest.mark.parametrize(("line", "expected"), [
    (b"status", "not JSON"),
    (b"[1]", 'must be a JSON object with a "cmd"'),
    (b'{"cmd": "format-disk"}', "unknown command 'format-disk'"),
    (b'{"cmd": "grant", "args": [1]}', '"args" must be a JSON object'),
    (b'{"cmd": "status", "x": 1}', "unknown request keys: x"),
])
def test_malformed_requests_say_what_to_send(line: bytes, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        parse_request(line)


# -- policy ----------
def test_rule_matches_kind_and_fields() -> None:
    cfg = parse_config("""
policy:
  - {name: no-nc, kind: exec, match: {filename: [/usr/bin/nc]}, action: deny}
  - {name: any-denied, kind: [exec_denied, connect_denied], action: alert}
""")
    pol = Policy(cfg.policy)
    assert [d.rule for d in pol.evaluate(_ev(filename="/usr/bin/nc"))] == ["no-nc"]
    assert pol.evaluate(_ev(filename="/usr/bin/ls")) == []
    assert [d.action for d in pol.evaluate(_ev("connect_denied"))] == ["alert"]


def test_threshold_counts_per_key_within_the_window() -> None:
    cfg = parse_config("""
policy:
  - {name: scan, kind: drop, action: quarantine, threshold: {count: 3, seconds: 10, by: src}}
""")
    pol = Policy(cfg.policy)
    fired = [pol.evaluate(_ev("drop", src="10.0.0.9"), now=t) for t in (0, 1)]
    fired.append(pol.evaluate(_ev("drop", src="10.0.0.8"), now=2))
    assert fired == [[], [], []]
    (d,) = pol.evaluate(_ev("drop", src="10.0.0.9"), now=3)
    assert d.action == "quarantine" and d.key == "10.0.0.9"
    # outside the window the old ones no longer count
    assert pol.evaluate(_ev("drop", src="10.0.0.8"), now=30) == []


# -- spool ----------
def test_spool_round_trip_ack_and_reopen(tmp_path: Path) -> None:
    sp = Spool(tmp_path, segment_bytes=4096)
    seqs = sp.append([_ev(i=i) for i in range(100)])
    assert seqs == list(range(100))
    assert len(list(tmp_path.glob("seg-*.log"))) > 1  # rotated by size
    assert [e.data["i"] for _s, e in sp.read(limit=5)] == [0, 1, 2, 3, 4]
    sp.ack(49)
    sp.close()
    again = Spool(tmp_path, segment_bytes=4096)
    assert again.acked == 49 and again.next_seq == 100
    assert [s for s, _e in again.read(limit=1000)] == list(range(50, 100))
    assert again.append([_ev(i=100)]) == [100]


def test_torn_tail_is_truncated(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    sp.append([_ev(i=i) for i in range(3)])
    sp.close()
    (seg,) = tmp_path.glob("seg-*.log")
    good = seg.stat().st_size
    with seg.open("ab") as fh:  # a write cut short by power loss
        fh.write(HEADER.pack(b"AS", 500, 0, 3) + b'{"id": "')
    again = Spool(tmp_path)
    assert seg.stat().st_size == good and again.problems == []
    assert [s for s, _e in again.read()] == [0, 1, 2]
    assert again.append([_ev()]) == [3]


def test_corrupt_middle_is_set_aside_and_reported(tmp_path: Path) -> None:
    sp = Spool(tmp_path, segment_bytes=4096)
    sp.append([_ev(i=i) for i in range(100)])
    sp.close()
    first = sorted(tmp_path.glob("seg-*.log"))[0]
    data = bytearray(first.read_bytes())
    data[HEADER.size + 10] ^= 0xFF  # flip a byte in the first record's payload
    first.write_bytes(bytes(data))
    again = Spool(tmp_path, segment_bytes=4096)
    (problem,) = again.problems
    assert problem.segment == first.name and "checksum mismatch" in problem.reason
    assert Path(problem.moved_to).read_bytes() == bytes(data)  # kept, not deleted
    seqs = [s for s, _e in again.read(limit=1000)]
    assert seqs and seqs[-1] == 99 and 0 not in seqs
    assert again.append([_ev()]) == [100]


def test_unreadable_cursor_is_set_aside(tmp_path: Path) -> None:
    Spool(tmp_path).append([_ev()])
    (tmp_path / "cursor.json").write_text("{garbage")
    again = Spool(tmp_path)
    assert again.acked == -1 and "cursor" in again.problems[0].reason
    assert (tmp_path / "corrupt").exists()


def test_bound_drops_oldest_and_alarm_fires_once(tmp_path: Path) -> None:
    sp = Spool(tmp_path, max_bytes=64 * 1024, segment_bytes=8192, high_water=0.5)
    raised = 0
    for i in range(200):
        sp.append([_ev(pad="x" * 400, i=i)])
        raised += sp.alarm_changed() is True
    assert sp.used() <= 64 * 1024 + 8192
    assert sp.dropped > 0 and sp.alarm
    seqs = [s for s, _e in sp.read(limit=1000)]
    assert seqs[-1] == 199 and seqs[0] == sp.dropped  # oldest went first, none twice
    assert len(seqs) == len(set(seqs)) == 200 - sp.dropped


def test_framing_header_layout() -> None:
    assert HEADER.size == struct.calcsize("<2sIIQ") == 18


# -- systemd unit ----------
# The figures the README states for each unit (systemd-analyze security).
# the agent: 3.0 until it kept CAP_SYS_PTRACE and CAP_KILL (0.3 + 0.1) to kill a denied exec
@pytest.mark.parametrize(("package", "limit"), [("agent", 3.4), ("controller", 1.2)])
def test_unit_verifies_and_is_sandboxed(tmp_path: Path, package: str, limit: float) -> None:
    import re
    import shutil
    import subprocess
    import sys

    from harness import REPO

    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    name = f"aegis-{package}"
    # the agent's unit ships with its role (the only copy); the controller's with its package
    unit = (REPO / "roles" / "agent" / "files" if package == "agent"
            else REPO / package / "systemd") / f"{name}.service"
    exe = str(Path(sys.executable).with_name(name))
    local = tmp_path / f"{name}.service"
    local.write_text(unit.read_text().replace(f"/opt/aegis/{package}/bin/{name}", exe))
    subprocess.run(["systemd-analyze", "verify", str(local)], check=True, capture_output=True)
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(local)],
                         check=True, capture_output=True, text=True).stdout
    level = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    assert level <= limit, out


# -- self-watchdog ----------
def test_watchdog_strikes_then_gives_up() -> None:
    from aegis_agent.config import WatchdogConfig
    from aegis_agent.watchdog import SelfWatch

    watch = SelfWatch(WatchdogConfig(max_rss_mb=1, max_cpu_percent=1e9, grace=2))  # > 1 MiB
    first = watch.check()
    assert len(first.over) == 1 and "rss" in first.over[0] and not first.fatal
    assert watch.check().fatal
    relaxed = SelfWatch(WatchdogConfig(max_rss_mb=1 << 20, max_cpu_percent=1e9))
    assert relaxed.check().over == [] and relaxed.strikes == 0



# -- policy through the enforcement ----------
def test_a_policy_action_is_recorded_once_and_never_judged_again(tmp_path: Path) -> None:
    """A quarantine rule on agent events: its own quarantine (an agent event, source
    policy) must not fire the rule again."""
    import asyncio

    from aegis_agent.daemon import Agent
    from aegis_protocol.events import agent_event

    class Segment:  # the kernel side of a segment filter, as far as quarantine needs it
        def __init__(self) -> None:
            self.calls: list[bool] = []

        def quarantine(self, on: bool, management: list[str] | None = None) -> None:
            self.calls.append(on)

        def policy(self) -> dict[str, object]:
            return {"quarantine": self.calls[-1]}

    cfg = parse_config(f"""
spool: {{dir: {tmp_path / 'spool'}}}
policy:
  - {{name: lockdown, kind: agent, match: {{what: [start]}}, action: quarantine}}
  - {{name: any-agent, kind: agent, action: quarantine}}
""")
    agent = Agent(cfg)
    seg = Segment()
    agent.segment = seg  # type: ignore[assignment]

    async def run() -> None:
        agent._loop = asyncio.get_running_loop()
        agent.record([agent_event("start")])

    asyncio.run(run())
    assert seg.calls == [True, True]  # once per rule that matched "start", not again
    events = [e for _s, e in agent.spool.read(-1, 100)]
    whats = [(e.kind, e.data.get("what"), e.data.get("source")) for e in events]
    assert whats == [("agent", "start", None), ("agent", "quarantine", "policy"),
                     ("agent", "quarantine", "policy"), ("policy", None, None),
                     ("policy", None, None)]
    assert {e.data["rule"] for e in events if e.kind == "policy"} == {"lockdown", "any-agent"}


def test_a_record_the_event_model_rejects_is_set_aside_and_reported(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    sp.append([_ev(i=0)])
    sp.close()
    foreign_record(tmp_path, 1, FUTURE_EVENT)  # e.g. a newer agent's event kind
    sp = Spool(tmp_path)
    assert sp.problems == []  # the checksum is good: not a corrupt segment
    sp.append([_ev(i=2)])
    records, upto = sp.read_batch()
    assert [s for s, _e in records] == [0, 2] and upto == 2
    assert sp.status()["records_set_aside"] == 1
    (kept,) = (tmp_path / "corrupt").glob("record-*.json")
    assert kept.read_bytes() == FUTURE_EVENT
    assert "kind" in kept.with_name(kept.name + ".why").read_text()
    # reported once, as an agent event after the others; read again: not reported again
    (report,) = [e for _s, e in sp.read(after=2)]
    assert report.data["what"] == "spool_record_set_aside" and report.data["seq"] == 1
    assert "file_open" not in str(report.data)  # the record's values are not echoed
    sp.read_batch()
    assert sp.status()["records_set_aside"] == 1 and len(sp.read(after=2)) == 1
