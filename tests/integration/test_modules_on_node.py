"""aegis.fleet modules on a real lab node: change, idempotence, check mode, and clear
errors for bad arguments. Uses the session fleet and leaves its nodes as it found them."""

import json

import pytest

from aegis_controller.lab.playbook import ansible_results

pytestmark = pytest.mark.e2e

TABLE = """table inet aegis_modtest {
    chain input {
        type filter hook input priority filter; policy accept;
        tcp dport 9 counter drop
    }
}"""


def _run(fleet, module, args):
    """Run a module on node1; ``args`` is a dict (sent as JSON) or a free-form string."""
    argstr = args if isinstance(args, str) else json.dumps(args)
    return ansible_results(fleet, "node1", module, argstr)["node1"]


def test_nft_ruleset_apply_idempotent_and_removed(fleet):
    first = _run(fleet, "aegis.fleet.nft_ruleset", {"content": TABLE, "rollback_timeout": 0})
    assert first["changed"] and not first.get("failed"), first
    again = _run(fleet, "aegis.fleet.nft_ruleset", {"content": TABLE, "rollback_timeout": 0})
    assert again["changed"] is False, again
    listed = _run(fleet, "ansible.builtin.command", {"argv": ["nft", "list", "table", "inet",
                                                              "aegis_modtest"]})
    assert "tcp dport 9 counter packets 0 bytes 0 drop" in listed["stdout"]
    gone = _run(fleet, "aegis.fleet.nft_ruleset", {"tables": ["inet aegis_modtest"],
                                                   "state": "absent", "rollback_timeout": 0})
    assert gone["changed"], gone
    absent = _run(fleet, "ansible.builtin.command", {"argv": ["nft", "list", "tables"]})
    assert "aegis_modtest" not in absent["stdout"]


def test_unconfirmed_change_rolls_back_by_itself(fleet):
    applied = _run(fleet, "aegis.fleet.nft_ruleset", {"content": TABLE, "rollback_timeout": 3,
                                                      "guard_name": "aegis-modtest"})
    assert applied["guard"] == "armed", applied
    waited = _run(fleet, "ansible.builtin.shell",
                  "for i in $(seq 60); do nft list table inet aegis_modtest >/dev/null 2>&1 "
                  "|| { echo gone; exit 0; }; sleep 0.5; done; echo still-there")
    assert waited["stdout"] == "gone", waited


@pytest.mark.parametrize(("module", "args", "needles"), [
    ("aegis.fleet.systemd_sandbox", {"unit": "nosuch.service", "settings": {"PrivateTmp": True}},
     ["unit: nosuch.service is not loaded", "systemctl list-unit-files"]),
    ("aegis.fleet.systemd_sandbox", {"unit": "cron", "settings": {"PrivateTmp": True}},
     ["unit: 'cron' is not a unit name", "cron.service"]),
    ("aegis.fleet.systemd_sandbox", {"unit": "cron.service", "settings": {"PrivateTemp": True}},
     ["settings: unknown directive(s) PrivateTemp", "allow_unknown"]),
    ("aegis.fleet.nft_ruleset", {"content": "table inet t { set s { type ipv4_addr; "
                                            "elements = { 10.0.0.300 } } }"},
     ["content: nft cannot load it"]),
    ("aegis.fleet.nft_ruleset", {"content": TABLE, "tables": ["inet x"]},
     ["mutually exclusive", "content", "tables"]),
    ("aegis.fleet.nft_ruleset", {"tables": ["inet"], "state": "absent"},
     ["tables: 'inet' is not 'FAMILY NAME'"]),
    ("aegis.fleet.nft_ruleset", {"content": "flush ruleset"},
     ["content: content may only declare whole tables"]),
    ("aegis.fleet.hardening_facts", {"units": ["cron"]}, ["units: 'cron' not full unit names"]),
])
def test_bad_arguments_name_the_argument_and_the_fix(fleet, module, args, needles):
    res = _run(fleet, module, args)
    assert res.get("failed"), res
    for needle in needles:
        assert needle in res["msg"], res["msg"]


def test_systemd_sandbox_scores_and_is_idempotent(fleet):
    settings = {"PrivateTmp": True, "ProtectHome": "read-only", "ProtectSystem": "full",
                "ProtectKernelTunables": True, "ProtectKernelModules": True,
                "RestrictAddressFamilies": ["AF_UNIX", "AF_INET", "AF_INET6"]}
    args = {"unit": "cron.service", "settings": settings, "name": "60-aegis-modtest",
            "restart": True}
    try:
        first = _run(fleet, "aegis.fleet.systemd_sandbox", args)
        assert first["changed"] and first["restarted"], first
        assert first["exposure_after"] < first["exposure_before"], first
        second = _run(fleet, "aegis.fleet.systemd_sandbox", args)
        assert second["changed"] is False, second
        # The sandbox is in force in the running service's mount namespace.
        home = _run(fleet, "ansible.builtin.shell",
                    "nsenter -t $(systemctl show -p MainPID --value cron.service) -m "
                    "findmnt -n -o OPTIONS --target /home")
        assert "ro" in home["stdout"].split(","), home
    finally:
        cleanup = _run(fleet, "aegis.fleet.systemd_sandbox",
                       {**args, "state": "absent", "settings": {}})
        assert not cleanup.get("failed"), cleanup


def test_hardening_facts_on_a_container_node(fleet):
    res = ansible_results(fleet, "node1", "aegis.fleet.hardening_facts",
                          json.dumps({"measure": ["/etc/hostname", "/nonexistent"],
                                      "units": ["cron.service", "nosuch.service"]}))["node1"]
    facts = res["ansible_facts"]["aegis_hardening"]
    assert res["changed"] is False
    assert facts["container"] is True and facts["virtualization"] == "podman"
    assert facts["kernel_sysctls_writable"] is False
    assert facts["sysctl"]["net.ipv4.tcp_syncookies"] in ("0", "1")
    assert facts["sshd"]["port"] == "22"
    assert len(facts["measurements"]["/etc/hostname"]) == 64
    assert facts["measurements"]["/nonexistent"] is None
    assert list(facts["unit_exposure"]) == ["cron.service"]
