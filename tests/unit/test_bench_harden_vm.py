"""The VM hardening bench's pure parts: reading the kernel-global sysctls the role set (its
sysctl.d file and ``sysctl`` output) into per-key states, the figures it prints, and the
phase timer. The bench itself boots a QEMU TCG VM (many minutes): `./aegis bench harden-vm`."""

from __future__ import annotations

import io
import json

import pytest

from benchmarks.figures import report
from benchmarks.harden_vm import (
    READ_KERNEL_SYSCTLS,
    Phases,
    parse_sysctl,
    split_kernel_read,
    sysctl_states,
    vm_figures,
)

pytestmark = pytest.mark.unit

# what the aegis.fleet.sysctls module writes, then what `sysctl -e` prints for its keys
STDOUT = """\
# Managed by aegis.fleet.harden
kernel.kptr_restrict = 2
kernel.yama.ptrace_scope = 2
-kernel.unprivileged_bpf_disabled = 1
fs.suid_dumpable = 0
kernel.printk = 3 4 1 3

#--- live
kernel.kptr_restrict = 2
kernel.yama.ptrace_scope = 1
kernel.unprivileged_bpf_disabled = 1
kernel.printk = 3\t4\t1\t3
"""


def test_parse_sysctl_reads_files_and_sysctl_output_alike() -> None:
    assert parse_sysctl("; comment\n# other\n\n  -vm.swappiness=10 \nnot a setting\n"
                        "kernel.printk = 3\t4  1 3\n") == {"vm.swappiness": "10",
                                                          "kernel.printk": "3 4 1 3"}


def test_split_and_states_say_which_keys_are_in_force() -> None:
    wanted, live = split_kernel_read(STDOUT)
    assert list(wanted) == ["kernel.kptr_restrict", "kernel.yama.ptrace_scope",
                            "kernel.unprivileged_bpf_disabled", "fs.suid_dumpable",
                            "kernel.printk"]
    assert sysctl_states(wanted, live) == {
        "kernel.kptr_restrict": "hardened (2)",
        "kernel.yama.ptrace_scope": "NOT hardened: 1, want 2",
        "kernel.unprivileged_bpf_disabled": "hardened (1)",
        "fs.suid_dumpable": "absent from this kernel",
        "kernel.printk": "hardened (3 4 1 3)",
    }


def test_no_role_file_means_no_keys() -> None:
    wanted, live = split_kernel_read("#--- live\n")  # cat failed: the role set nothing
    assert (wanted, live) == ({}, {})
    assert "/etc/sysctl.d/90-aegis-kernel.conf" in READ_KERNEL_SYSCTLS


def _report(index: int, warnings: list[str], waived: list[str]) -> dict:
    return {"lynis": {"hardening_index": index, "warnings": warnings,
                      "warnings_unwaived": warnings, "suggestions": ["PKGS-7346|x|-|-|"],
                      "suggestions_unwaived": ["PKGS-7346|x|-|-|"],
                      "waived": [{"id": i, "reason": "r"} for i in waived]}}


def test_vm_figures_gain_sysctls_and_phase_times() -> None:
    wanted, live = split_kernel_read(STDOUT)
    before = {"vm1": _report(57, ["SSH-7408|PermitRootLogin|-|", "KRNL-5830|reboot|-|"], [])}
    after = {"vm1": _report(80, [], ["PKGS-7392"])}
    after["vm1"]["lynis"]["sysctl_differs"] = {
        "kernel.modules_disabled": {"value": "0", "wanted": "1"}}
    took = {"boot": 61.2, "audit_before": 400.0, "converge": 250.5, "total": 1500.0}
    figures, targets, notes = vm_figures(before, after, took, wanted, live)
    assert figures["lynis_before_vm1"] == 57
    assert figures["lynis_after_vm1"] == 80
    assert figures["lynis_gain_vm1"] == 23
    assert figures["warnings_unwaived_vm1"] == 0
    assert figures["kernel_keys_set"] == 5
    assert figures["kernel_keys_hardened"] == 3
    assert targets["kernel_keys_hardened"] == "== 5"
    assert figures["converge_s"] == 250.5
    assert figures["boot_s"] == 61.2
    assert figures["total_s"] == 1500.0
    # one converge under TCG: the container bench's second-run figures and targets do not apply
    assert not {"converge_first_s", "converge_second_s", "converge_ratio"} & set(figures)
    assert not {"converge_first_s", "converge_second_s", "converge_ratio"} & set(targets)
    assert notes["waived_vm1"] == "PKGS-7392"
    assert notes["warnings_left_vm1"] == "-"
    assert notes["suggestions_left_vm1"] == "PKGS-7346"
    assert notes["sysctl kernel.yama.ptrace_scope"] == "NOT hardened: 1, want 2"
    assert notes["Lynis KRNL-6000 kernel.modules_disabled"] == "0, Lynis wants 1"
    out = io.StringIO()
    report("harden_vm", figures, targets=targets, notes=notes, out=out)
    last = json.loads(out.getvalue().splitlines()[-1])
    assert last["bench"] == "harden_vm" and last["lynis_gain_vm1"] == 23


def test_phases_print_start_and_end_with_elapsed_time_also_on_failure() -> None:
    ticks = iter([0.0, 2.0, 5.0, 5.0, 5.0, 9.5, 9.5])
    lines: list[str] = []
    phases = Phases(emit=lines.append, clock=lambda: next(ticks))
    with phases("boot", "booting"):
        pass
    with pytest.raises(RuntimeError), phases("audit", "auditing"):
        raise RuntimeError("Lynis failed")
    assert phases.took == {"boot": 3.0, "audit": 4.5}
    assert lines == ["[    2.0 s] booting ...", "[    5.0 s] booting: done in 3.0 s",
                     "[    5.0 s] auditing ...", "[    9.5 s] auditing: FAILED in 4.5 s"]
