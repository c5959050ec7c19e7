"""What the agent measures for attestation, and the signed report it sends.

The list of files to hash comes from the golden record the hardening role wrote
(``/var/lib/aegis/golden.json``); the values the node must match live on the controller
(its expected profile), so editing the record on the node changes nothing but the list.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aegis_protocol.attestation import AttestationReport, Measurement, SignedReport
from aegis_protocol.signing import canonical, sign

from . import __version__
from .bpf import syscall
from .bpf.bpffs import PIN_ROOT
from .bpf.syscall import BpfError

GOLDEN = Path("/var/lib/aegis/golden.json")
IMAGE_ID = Path("/etc/aegis/image-id")


def sha256_file(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _sysctl_digest(names: list[str], root: Path) -> str | None:
    if not names:
        return None
    values = {n: _read(root / "proc/sys" / n.replace(".", "/")) for n in sorted(names)}
    return hashlib.sha256(canonical(values)).hexdigest()


def _sshd_digest() -> str | None:
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    if not sshd:
        return None
    out = subprocess.run([sshd, "-T"], capture_output=True, text=True, check=False, timeout=30)
    if out.returncode:
        return None
    return hashlib.sha256("\n".join(sorted(out.stdout.splitlines())).encode()).hexdigest()


def bpf_objects(component: str, pin_dir: Path) -> list[dict[str, str | int]]:
    """The programs and links pinned in ``pin_dir``, read back from the kernel: a program
    by its tag (the hash of its loaded instructions), a link by its type and attach type.
    Maps are left out (their contents are state, not code)."""
    found: list[dict[str, str | int]] = []
    if not pin_dir.is_dir():
        return found
    for path in sorted(p for p in pin_dir.iterdir() if p.is_file()):
        try:
            fd = syscall.obj_get(str(path))
        except (BpfError, OSError):
            continue
        try:
            kind = os.readlink(f"/proc/self/fd/{fd}")
            pin = f"{component}/{path.name}"
            if kind == "anon_inode:bpf-prog":
                info = syscall.prog_info(fd)
                found.append({"pin": pin, "kind": "prog", "type": info.type,
                              "tag": bytes(info.tag).hex(), "name": info.prog_name})
            elif kind == "anon_inode:bpf_link":
                link = syscall.link_info(fd)
                found.append({"pin": pin, "kind": "link", "type": link.type,
                              "attach_type": link.attach_type})
        except (BpfError, OSError):
            continue
        finally:
            os.close(fd)
    return found


def collect(golden: Path = GOLDEN, root: Path = Path("/"), *, sshd: bool = True,
            bpf: list[dict[str, str | int]] | None = None) -> Measurement:
    """Measure this node (``root`` lets a test measure a tree of its own). ``bpf``: the
    agent's enforcement as it stands (components, modes, pinned programs); without it
    the top-level pin names are listed."""
    try:
        record = json.loads((root / golden.relative_to("/")).read_text())
    except (OSError, ValueError):
        record = {}
    files = sorted(record.get("files", {})) if isinstance(record, dict) else []
    pins = (sorted(p.name for p in PIN_ROOT.iterdir())
            if root == Path("/") and PIN_ROOT.is_dir() else [])
    return Measurement(
        kernel_release=os.uname().release,
        boot_id=_read(root / "proc/sys/kernel/random/boot_id"),
        image_id=_read(root / IMAGE_ID.relative_to("/")),
        golden={f: sha256_file(root / f.lstrip("/")) for f in files},
        sysctl_digest=_sysctl_digest(list(record.get("sysctl", {})) if record else [], root),
        sshd_digest=_sshd_digest() if sshd and root == Path("/") else None,
        bpf=bpf if bpf is not None else [{"pin": p} for p in pins],
        agent_version=__version__,
    )


def signed_report(key: Ed25519PrivateKey, node_id: str, nonce: str,
                  measurement: Measurement) -> SignedReport:
    report = AttestationReport(node_id=node_id, nonce=nonce, measured_at=int(time.time()),
                               measurement=measurement)
    return SignedReport(report=report, signature=sign(key, report))
