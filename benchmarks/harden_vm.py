"""Hardening figures on a QEMU VM node (its own Debian kernel, TCG emulation): Lynis
hardening index before and after converge with the gain, the findings left and waived
(roles/harden/files/lynis_waivers.yml), the kernel-global sysctls the role set on the VM
(kernel.*, fs.*, net.core.*: container nodes share the host's kernel, so only a VM has
them) and whether each is in force, and how long each phase took.

Slow: TCG emulates every instruction. One run on this machine's two cores (load 4-7, a
test suite running beside it) took 70 min: boot 55 s, audit before 1,713 s, full converge
310 s, audit after 2,088 s; Lynis 69 -> 90, no finding left without a waiver, 17 of 17
kernel-global sysctls in force, KRNL-6000 only for kernel.modules_disabled (waived). Not part of
``./aegis bench`` (all); run it as ``./aegis bench harden-vm`` or
``python -m benchmarks.harden_vm [--prefix P] [--scope full|kernel]``.

``--scope full`` (default) converges the whole role (playbooks/harden.yml), as the
container bench does; ``--scope kernel`` converges only the kernel-facing features with
the variables of the Molecule scenario harden_vm (molecule/harden_vm/converge.yml).
The VM is taken down when the bench ends, also on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from aegis_controller.playbook import Progress
from aegis_lab.naming import check_prefix
from aegis_lab.paths import Paths
from aegis_lab.playbook import ansible_playbook, ansible_results
from aegis_lab.vm import VmNode
from benchmarks.figures import report
from benchmarks.harden import audit, lynis_figures

KERNEL_CONF = "/etc/sysctl.d/90-aegis-kernel.conf"
_LIVE_MARK = "#--- live"
# The file the role writes, then the live value of every key it names (-e: a key this
# kernel lacks is left out, and reported as absent).
READ_KERNEL_SYSCTLS = (
    f"cat {KERNEL_CONF}; echo '{_LIVE_MARK}'; "
    f"sed -n 's/^-\\?[[:space:]]*\\([a-z][^[:space:]=]*\\)[[:space:]]*=.*/\\1/p' {KERNEL_CONF}"
    " | xargs -r sysctl -e")
SCOPES = ("full", "kernel")
# Lynis under TCG took 18-20 min on a quiet machine and over 30 min (the playbook's default
# timeout) with the machine's two cores loaded about 9 deep
AUDIT_TIMEOUT_S = 5400


def parse_sysctl(text: str) -> dict[str, str]:
    """``{key: value}`` from ``sysctl`` output or a sysctl.d file (``key = value`` lines;
    comments, blank lines and the ``-`` that marks an optional key are dropped; a value of
    several fields keeps them separated by one space)."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip().lstrip("-").strip()] = " ".join(value.split())
    return values


def split_kernel_read(stdout: str) -> tuple[dict[str, str], dict[str, str]]:
    """The role's kernel-global settings (wanted) and their live values, from the output of
    :data:`READ_KERNEL_SYSCTLS`."""
    conf, _, live = stdout.partition(_LIVE_MARK)
    return parse_sysctl(conf), parse_sysctl(live)


def sysctl_states(wanted: Mapping[str, str], live: Mapping[str, str]) -> dict[str, str]:
    """Per key the role set: ``hardened (2)``, ``NOT hardened: 1, want 2`` or ``absent``."""
    states = {}
    for key, want in wanted.items():
        if key not in live:
            states[key] = "absent from this kernel"
        elif live[key] == want:
            states[key] = f"hardened ({want})"
        else:
            states[key] = f"NOT hardened: {live[key]}, want {want}"
    return states


def vm_figures(before: dict[str, dict], after: dict[str, dict], took: Mapping[str, float],
               wanted: Mapping[str, str], live: Mapping[str, str],
               ) -> tuple[dict[str, object], dict[str, str], dict[str, str]]:
    """Figures, targets and notes of the VM bench: the Lynis ones of the container bench
    (:func:`benchmarks.harden.lynis_figures`), the kernel-global sysctls (wanted → live) and
    the seconds of each phase (``took``: phase → s; one converge, under TCG)."""
    lynis, targets, notes = lynis_figures(before, after)
    figures: dict[str, object] = dict(lynis)
    states = sysctl_states(wanted, live)
    figures["kernel_keys_set"] = len(wanted)
    figures["kernel_keys_hardened"] = sum(s.startswith("hardened") for s in states.values())
    targets["kernel_keys_set"] = "> 0"
    targets["kernel_keys_hardened"] = f"== {len(wanted)}"
    for phase, seconds in took.items():
        figures[f"{phase}_s"] = seconds
    notes.update({f"sysctl {key}": state for key, state in states.items()})
    for report_after in after.values():  # KRNL-6000's keys: what Lynis still finds different
        for key, found in report_after["lynis"].get("sysctl_differs", {}).items():
            notes[f"Lynis KRNL-6000 {key}"] = f"{found['value']}, Lynis wants {found['wanted']}"
    return figures, targets, notes


@dataclass
class Phases:
    """Prints each phase as it starts and ends, with the time since the bench started,
    and keeps how long each took (``took``: name → s)."""

    emit: Callable[[str], None] = print
    clock: Callable[[], float] = time.monotonic
    took: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.started = self.clock()

    @contextlib.contextmanager
    def __call__(self, name: str, what: str) -> Iterator[None]:
        begin = self.clock()
        self.emit(f"[{begin - self.started:7.1f} s] {what} ...")
        ok = False
        try:
            yield
            ok = True
        finally:
            self.took[name] = round(self.clock() - begin, 1)
            self.emit(f"[{self.clock() - self.started:7.1f} s] {what}: "
                      f"{'done' if ok else 'FAILED'} in {self.took[name]} s")


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _read_kernel_sysctls(vm: VmNode) -> tuple[dict[str, str], dict[str, str]]:
    node = vm.name
    result = ansible_results(vm, node, "ansible.builtin.shell", READ_KERNEL_SYSCTLS,
                             timeout=300)[node]
    if result.get("rc", 1) != 0 and not result.get("stdout"):
        raise RuntimeError(f"could not read {KERNEL_CONF} on {node}: "
                           f"{result.get('stderr') or result.get('msg')}")
    return split_kernel_read(result.get("stdout", ""))


def run(paths: Paths, prefix: str = "aegishv", scope: str = "full") -> int:
    """Boot one VM, audit, converge, audit again, read its kernel sysctls; VM always down."""
    if scope not in SCOPES:
        raise SystemExit(f"--scope {scope!r}: use one of {', '.join(SCOPES)}")
    playbook = (paths.playbooks / "harden.yml" if scope == "full"
                else paths.repo_root / "molecule" / "harden_vm" / "converge.yml")
    vm = VmNode(check_prefix(prefix), "vm1", paths)
    phases = Phases()
    old_term = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    booted = False  # vm.up takes down what it started itself when it fails
    try:
        with phases("boot", f"booting VM {vm.prefix}-{vm.name} (QEMU TCG) until SSH answers"):
            vm.up(progress=print)
            booted = True
        work = vm.dir / "bench"
        with phases("audit_before", "audit before converge (role dry run + Lynis)"):
            before = audit(vm, work / "before", timeout=AUDIT_TIMEOUT_S)
        with phases("converge", f"converge aegis.fleet.harden ({scope}: "
                                f"{playbook.relative_to(paths.repo_root)})"):
            ansible_playbook(vm, playbook, on_event=Progress("harden"), check=True)
        with phases("read_sysctls", f"reading the kernel-global sysctls over SSH ({KERNEL_CONF})"):
            wanted, live = _read_kernel_sysctls(vm)
        with phases("audit_after", "audit after converge (role dry run + Lynis)"):
            after = audit(vm, work / "after", timeout=AUDIT_TIMEOUT_S)
    finally:
        if booted:
            with phases("down", "taking the VM down"):
                vm.down()
        signal.signal(signal.SIGTERM, old_term)
    phases.took["total"] = round(time.monotonic() - phases.started, 1)
    figures, targets, notes = vm_figures(before, after, phases.took, wanted, live)
    report("harden_vm", figures,
           title=f"hardening on a QEMU TCG VM node ({vm.name}, scope {scope})",
           targets=targets, notes={"scope": scope, **notes})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.harden_vm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefix", type=check_prefix, default="aegishv",
                   help="lab prefix of the VM node (default aegishv)")
    p.add_argument("--scope", choices=SCOPES, default="full",
                   help="full: the whole role (default); kernel: the harden_vm scenario's features")
    args, _ = p.parse_known_args(argv)
    return run(Paths.discover(), prefix=args.prefix, scope=args.scope)


if __name__ == "__main__":
    sys.exit(main())
