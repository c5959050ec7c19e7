"""The audit's Lynis waivers: the shipped file is valid, a finding is waived only where its
id, node kind and detail match, the report keeps every finding and says which are left, and
a malformed waiver file is refused with a message that says what to fix."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from aegis_lab.playbook import ansible_env
from ansible_collections.aegis.fleet.plugins.filter.lynis_waivers import (
    lynis_report,
    lynis_waiver_errors,
)
from harness import PATHS, REPO

pytestmark = pytest.mark.unit

SHIPPED = REPO / "roles" / "harden" / "files" / "lynis_waivers.yml"
LINES = [
    "hardening_index=84",
    "warning[]=PKGS-7388|Can't find any security repository|-|-|",
    "suggestion[]=SSH-7408|Consider hardening SSH configuration|Port (set 22 to )|-|",
    "suggestion[]=SSH-7408|Consider hardening SSH configuration|MaxSessions (set 10 to 2)|-|",
    "suggestion[]=TIME-3104|Use NTP daemon or NTP client to prevent time issues.|-|-|",
    "suggestion[]=NEW-0001|Something nobody waived|-|-|",
]
WAIVERS = """
- {id: PKGS-7388, reason: "patched by rebuild"}
- {id: SSH-7408, detail: Port, reason: "port is not a secret"}
- {id: TIME-3104, applies: container, reason: "the host's clock"}
"""


def test_the_shipped_waiver_file_is_valid_and_every_waiver_has_a_reason() -> None:
    text = SHIPPED.read_text()
    assert lynis_waiver_errors(text) == []
    waivers = yaml.safe_load(text)
    assert len(waivers) >= 10
    assert all(w["reason"].strip() and w["id"].strip() for w in waivers)


def test_waivers_match_id_node_kind_and_detail() -> None:
    container = lynis_report(LINES, WAIVERS, container=True)
    assert container["hardening_index"] == "84"
    assert len(container["warnings"]) == 1 and len(container["suggestions"]) == 4
    assert container["warnings_unwaived"] == []
    assert [w["id"] for w in container["waived"]] == ["PKGS-7388", "SSH-7408", "TIME-3104"]
    assert container["waived"][0] == {"id": "PKGS-7388", "kind": "warning", "detail": "-",
                                      "reason": "patched by rebuild"}
    assert container["waived"][1]["detail"] == "Port (set 22 to )"
    # the other SSH-7408 setting is not waived by the Port waiver
    assert [e.split("|")[0] for e in container["suggestions_unwaived"]] == ["SSH-7408", "NEW-0001"]
    assert "MaxSessions" in container["suggestions_unwaived"][0]
    # a container-only waiver does not apply to a VM node
    vm = lynis_report(LINES, WAIVERS, container=False)
    left = [e.split("|")[0] for e in vm["suggestions_unwaived"]]
    assert left == ["SSH-7408", "TIME-3104", "NEW-0001"]


KRNL = [
    "suggestion[]=KRNL-6000|One or more sysctl values differ from the scan profile and could "
    "be tweaked||Change sysctl value or disable test (skip-test=KRNL-6000:<sysctl-key>)|",
    "details[]=KRNL-6000|sysctl|desc:Restrict module loading;field:kernel.modules_disabled;"
    "prefval:1;value:0;|",
]
PTRACE = ("details[]=KRNL-6000|sysctl|desc:Disable process tracing for everyone;"
          "field:kernel.yama.ptrace_scope;prefval:1 2 3;value:0;|")
KEY_WAIVERS = """
- {id: KRNL-6000, applies: vm, detail: kernel.modules_disabled, reason: "modules load late"}
- {id: KRNL-6000, applies: container, reason: "the host's kernel"}
"""


def test_a_kernel_key_waiver_waives_krnl_6000_only_while_every_key_it_names_has_one() -> None:
    vm = lynis_report(KRNL, KEY_WAIVERS)
    assert vm["suggestions_unwaived"] == []
    assert vm["waived"] == [{"id": "KRNL-6000", "kind": "suggestion", "detail": "",
                             "reason": "kernel.modules_disabled: modules load late"}]
    # one more key differs: the suggestion is left, with both keys named in sysctl_differs
    vm = lynis_report([*KRNL, PTRACE], KEY_WAIVERS)
    assert [e.split("|")[0] for e in vm["suggestions_unwaived"]] == ["KRNL-6000"]
    assert vm["waived"] == []
    assert set(vm["sysctl_differs"]) == {"kernel.modules_disabled", "kernel.yama.ptrace_scope"}
    # the container waiver has no detail: it covers every key
    container = lynis_report([*KRNL, PTRACE], KEY_WAIVERS, container=True)
    assert container["suggestions_unwaived"] == []
    assert container["waived"][0]["reason"] == "the host's kernel"


def test_no_lynis_output_gives_an_empty_report() -> None:
    assert lynis_report([], "[]") == {"hardening_index": "", "waived": [], "warnings": [],
                                      "warnings_unwaived": [], "suggestions": [],
                                      "suggestions_unwaived": [], "sysctl_differs": {}}


def test_the_kernel_keys_lynis_finds_different_are_named_with_both_values() -> None:
    lines = [
        "suggestion[]=KRNL-6000|One or more sysctl values differ from the scan profile and "
        "could be tweaked||Change sysctl value or disable test (skip-test=KRNL-6000:<sysctl-key>)|",
        "details[]=KRNL-6000|sysctl|desc:Restrict module loading once this sysctl value is "
        "loaded;field:kernel.modules_disabled;prefval:1;value:0;|",
        "details[]=KRNL-6000|sysctl|desc:Disable process tracing for everyone;"
        "field:kernel.yama.ptrace_scope;prefval:1 2 3;value:0;|",
        "details[]=SSH-7408|sshd|desc:sshd option;field:Port;prefval:;value:22;|",
    ]
    report = lynis_report(lines, "[]")
    assert report["sysctl_differs"] == {
        "kernel.modules_disabled": {"value": "0", "wanted": "1"},
        "kernel.yama.ptrace_scope": {"value": "0", "wanted": "1 2 3"},
    }


@pytest.mark.parametrize(("text", "expected"), [
    ("- id: [", "is not YAML"),
    ("id: SSH-7408", "must be a list of waivers"),
    ("- {id: SSH-7408}", "[0].reason: missing or empty"),
    ("- {reason: why}", "[0].id: None is not a Lynis test id"),
    ("- {id: SSH-7408, reason: why, applies: bare-metal}",
     "[0].applies: 'bare-metal' is not one of all, container, vm"),
    ("- {id: SSH-7408, reason: why, until: 2027}", "[0]: unknown key(s) until"),
    ("- SSH-7408", "[0]: 'SSH-7408' is not a waiver"),
])
def test_a_malformed_waiver_file_is_refused_with_what_to_fix(text: str, expected: str) -> None:
    errors = lynis_waiver_errors(text, "waivers.yml")
    assert any(expected in e for e in errors), errors
    with pytest.raises(AnsibleFilterError, match="lynis_report"):
        lynis_report(LINES, text)


def test_the_audit_playbook_refuses_a_malformed_waiver_file(tmp_path) -> None:
    """The audit fails before it touches a node, naming the file and the fix."""
    bad = tmp_path / "waivers.yml"
    bad.write_text("- {id: SSH-7408}\n")
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  hosts: {}\n")
    env_bin = sys.executable.rsplit("/", 1)[0]
    proc = subprocess.run(
        [f"{env_bin}/ansible-playbook", str(REPO / "playbooks" / "audit.yml"), "-i", str(inventory),
         "-e", f"aegis_audit_waivers_file={bad}", "-e", f"aegis_audit_report_dir={tmp_path / 'r'}",
         "-e", f"aegis_audit_cache={tmp_path / 'c'}", "-e", "aegis_audit_lynis=false"],
        capture_output=True, text=True, check=False, timeout=300,
        env=ansible_env(PATHS),
    )
    assert proc.returncode != 0
    assert "reason: missing or empty" in proc.stdout, proc.stdout[-2000:]
    assert str(bad) in proc.stdout
