"""Issue 15's acceptance on real lab fleet nodes: just-in-time access and a label policy
enforced by the agent installed by ``aegis.fleet.agent`` on two container nodes (systemd,
SSH), ``web`` and ``db``, with its XDP/tcx filter on each node's ``eth0``.

The controller runs on the host at the fleet bridge's gateway address (the nodes reach it
there; the agent role makes it a management peer) and trusts the run's real OpenBao as
identity provider (users from ``userpass``: ``dana`` of group dev, allowed ``db``
tcp/5432; ``eve`` of group sales). The user's machine is a network namespace attached to
the fleet bridge by a veth, at an address of the fleet's /24 that no node uses
(``harness_fleet_agents.user_host``).

(a) without a grant the user's TCP connection to ``db`` is dropped by db's filter (a
timeout, not a refusal); eve's request is refused with the reason; dana's is granted and
her connection reaches db's service (that port of that node only); her revoke cuts it.
(b) the label policy ``web -> db tcp/5432`` lets node web reach db on that port and on no
other, while the user host (no trusted node) stays out; when web's golden file changes
(real attestation drift) web turns suspect and is dropped.

(c) a second grant of dana's (``cache``, tcp/6379 on db) carries one connection and then
nothing while (b) runs: db's agent drops it after 60 s without a packet, the controller
records the idle revoke under her name, and a new connection is dropped.

The trickle that keeps a grant open past 60 s is shown on namespace pairs
(``tests/integration/test_access_datapath.py``), not repeated here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import yaml
from harness_fleet_agents import AgentFleet, agent_fleet, user_host
from harness_idp import make_idp

from aegis_lab.playbook import ansible_results
from aegis_protocol import routes
from conftest import sub_prefix
from harness import OpenBao, wait_until

pytestmark = pytest.mark.e2e

PORT, OTHER_PORT, CACHE_PORT = 5432, 5433, 6379
#: dana's cache grant: (request id, monotonic time of its last packet), set by the first test
SILENT: dict[str, tuple[str, float]] = {}
LABELS = {"web": {"role": "web"}, "db": {"role": "db"}}
SEGMENT_POLICY = {"policies": [{"name": "web-db", "from": {"role": "web"},
                                "to": {"role": "db"}, "ports": [f"tcp/{PORT}"],
                                "action": "allow", "mode": "enforce"}]}


@pytest.fixture(scope="module")
def lab(openbao: OpenBao) -> Iterator[AgentFleet]:
    prefix = sub_prefix()
    idp = make_idp(openbao, prefix, {"dana": ["dev"], "eve": ["sales"]})
    with agent_fleet(prefix, LABELS, idp) as lab:
        policy = lab.server.state / "access.yml"
        policy.write_text(yaml.safe_dump({
            "roles": {"developer": [idp.group("dev")]},
            "services": {"db": {"nodes": {"role": "db"}, "port": f"tcp/{PORT}"},
                         "cache": {"nodes": {"role": "db"}, "port": f"tcp/{CACHE_PORT}"}},
            "rules": [{"name": "developers-db", "service": "db", "roles": ["developer"],
                       "max_ttl": "1h"},
                      {"name": "developers-cache", "service": "cache",
                       "roles": ["developer"], "max_ttl": "1h"}]}))
        lab.ctl("access", "policy", "set", str(policy))
        for node in lab.nodes:  # a timeout below is the filter's drop, not a closed port
            for port in (PORT, OTHER_PORT, CACHE_PORT):
                lab.listen(node, port)
        yield lab


def _drops(lab: AgentFleet, node: str) -> int:
    out = lab.exec(node, "/opt/aegis/agent/bin/aegis-agent", "segment", "--iface", "eth0",
                   "counters")
    assert out.returncode == 0, out.stderr
    return int(json.loads(out.stdout)["ingress"]["drop_no_edge"])


def test_a_granted_user_reaches_db_on_the_fleet_and_others_do_not(lab: AgentFleet) -> None:
    assert lab.idp is not None
    db, web = lab.address("db"), lab.address("web")
    status = lab.agent_status("db")
    assert status["segment"]["attached"] and status["segment"]["iface"] == "eth0", status
    # veth in a container: native XDP where the kernel's veth driver takes it, else generic
    assert status["segment"]["xdp_mode"] in ("native", "generic"), status["segment"]
    print(f"db's filter: xdp/{status['segment']['xdp_mode']} {status['segment']['tc_mode']}")
    with user_host(lab) as user:
        # no request: db's filter drops the SYN (a timeout; a refusal would mean it passed)
        before = _drops(lab, "db")
        assert user.connect(db, PORT) == "timeout"
        assert _drops(lab, "db") > before
        # a user of another group is refused, with the reason, and nothing opens
        r = user.request(lab.server, "POST", routes.ACCESS, lab.idp.token("eve"),
                         {"service": "db", "ttl": "10m", "reason": "curious"})
        assert r.status_code == 403 and "no rule of the access policy" in r.json()["detail"], \
            r.text
        assert user.connect(db, PORT) == "timeout"
        # dana's JWT from OpenBao: granted, the signed grant order runs on db's agent
        dana = lab.idp.token("dana")
        r = user.request(lab.server, "POST", routes.ACCESS, dana,
                         {"service": "db", "ttl": "10m", "reason": "INC-42"})
        assert r.status_code == 201 and r.json()["status"] == "granted", r.text
        granted = r.json()
        (edge,) = granted["edges"]
        assert edge["edge"] == f"{user.address} -> {db} tcp/{PORT}"
        assert wait_until(lambda: lab.order_status(edge["grant_order"]) == "done", 30), \
            lab.journal("db")
        assert wait_until(lambda: user.connect(db, PORT) == "open", 15)
        # that service of that node only
        assert user.connect(db, OTHER_PORT) == "timeout"
        assert user.connect(web, PORT) == "timeout"
        # the agent reports the first packet; the controller records it under the grant
        assert wait_until(lambda: user.request(
            lab.server, "GET", routes.access_one(granted["request_id"]), dana
        ).json()["edges"][0]["first_packet_ns"], 30)
        # (c) a second grant, cache: one connection, then silence until the last test
        r = user.request(lab.server, "POST", routes.ACCESS, dana,
                         {"service": "cache", "ttl": "30m", "reason": "INC-42"})
        assert r.status_code == 201 and r.json()["status"] == "granted", r.text
        cache = r.json()
        assert wait_until(lambda: lab.order_status(cache["edges"][0]["grant_order"])
                          == "done", 30), lab.journal("db")
        assert wait_until(lambda: user.connect(db, CACHE_PORT) == "open", 15)
        SILENT["cache"] = (cache["request_id"], time.monotonic())
        # dana's revoke: the agent removes the edge, the connection is dropped again
        r = user.request(lab.server, "POST", routes.access_one(granted["request_id"],
                                                               "revoke"), dana,
                         {"reason": "done"})
        assert r.status_code == 200 and r.json()["status"] == "revoked", r.text
        revoke = r.json()["edges"][0]["revoke_order"]
        assert wait_until(lambda: lab.order_status(revoke) == "done", 30)
        assert wait_until(lambda: user.connect(db, PORT) == "timeout", 15)
    ledger = [json.loads(line) for line in lab.ctl("ledger", "show").splitlines()]
    steps = [e["body"] for e in ledger if e["subject"] == f"access:{granted['request_id']}"]
    assert [s["event"] for s in steps] == ["request", "grant", "first_packet", "revoke"]
    assert steps[0]["user"]["name"] == f"{lab.idp.tag}-dana"


def test_label_policy_lets_web_reach_db_until_web_turns_suspect(lab: AgentFleet) -> None:
    db = lab.address("db")
    assert lab.connect_from("web", db, PORT) == "timeout"  # no policy yet: dropped
    path = lab.server.state / "segment.yml"
    path.write_text(yaml.safe_dump(SEGMENT_POLICY))
    out = json.loads(lab.ctl("segment", "policy", "set", str(path)))
    assert out["pushed"], out  # db gets its entries (web, a source only, gets none)
    assert wait_until(lambda: lab.push_status("db") == "done", 30), lab.journal("db")
    assert wait_until(lambda: lab.connect_from("web", db, PORT) == "open", 15)
    assert lab.connect_from("web", db, OTHER_PORT) == "timeout"  # that port, nothing else
    with user_host(lab) as user:  # an address that is no trusted web node stays out
        assert user.connect(db, PORT) == "timeout"
    counters = lab.agent_status("db")["segment"]["label_policies"]["web-db"]
    assert counters["mode"] == "enforce"
    assert counters["allowed_packets"] > 0 and counters["dropped_packets"] > 0, counters

    # web drifts: a golden file changes, the next attestation makes it suspect
    pushed = lab.push_order("db")
    res = ansible_results(lab.fleet, "web", "ansible.builtin.lineinfile",
                          "path=/etc/login.defs line='# drift'")
    assert res["web"].get("changed"), res
    lab.ctl("order", "create", "web", "attest", "--arg", "reason=test")
    assert wait_until(lambda: lab.node("web").get("state") == "suspect", 90), lab.node("web")
    assert "/etc/login.defs" in lab.node("web")["reason"]
    # web dropped out of the policy: db got a new set and web's connection is dropped
    assert wait_until(lambda: lab.push_order("db") != pushed
                      and lab.push_status("db") == "done", 30), lab.journal("db")
    assert wait_until(lambda: lab.connect_from("web", db, PORT) == "timeout", 15)
    assert lab.agent_status("db")["segment"]["label_policies"] == {}
    assert lab.server.ctl("ledger", "verify").returncode == 0


def test_a_silent_grant_is_revoked_after_60_s_without_a_packet(lab: AgentFleet) -> None:
    """(c): nothing has used dana's cache grant since its one connection in the first
    test; db's agent drops the edge after the idle timeout (60 s) and the controller
    records it, and the user's next connection is dropped."""
    assert lab.idp is not None and "cache" in SILENT, "the first test made the grant"
    request_id, last_packet = SILENT["cache"]
    dana = lab.idp.token("dana")
    db = lab.address("db")
    with user_host(lab) as user:
        def grant() -> dict:
            return user.request(lab.server, "GET", routes.access_one(request_id), dana).json()

        assert wait_until(lambda: grant()["status"] == "revoked", 150, 2), grant()
        assert time.monotonic() - last_packet >= 60
        state = grant()
        assert state["end_reason"].startswith("idle: no traffic for 60 s"), state
        assert state["edges"][0]["status"] == "idle", state
        assert user.connect(db, CACHE_PORT) == "timeout"
    ledger = [json.loads(line) for line in lab.ctl("ledger", "show").splitlines()]
    steps = [e["body"] for e in ledger if e["subject"] == f"access:{request_id}"]
    assert [s["event"] for s in steps] == ["request", "grant", "first_packet", "idle_revoke"]
    assert steps[-1]["user"]["name"] == f"{lab.idp.tag}-dana"
