"""The loader's struct mirrors (``aegis_agent.bpf.layout``) cannot drift from the C
headers the programs are built with: every CStruct's sizeof, each field's offsetof and each
mirrored ``#define`` become ``_Static_assert``s that clang checks against ``bpf/*.h`` (no
kernel needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from aegis_agent.bpf import layout
from aegis_agent.bpf.layout import CStruct
from harness import REPO

pytestmark = pytest.mark.unit

BPF_DIR = REPO / "bpf"
HEADERS = {"segment.h": [layout.CONFIG, layout.EDGE_KEY, layout.EDGE_VAL, layout.EDGE_LPM_KEY,
                         layout.EDGE_LPM_DATA, layout.MGMT_KEY, layout.MGMT_DATA,
                         layout.MGMT_NET_KEY, layout.MGMT_NET_DATA,
                         layout.FLOW_KEY, layout.FLOW_VAL, layout.ATTACH, layout.SEG_EVENT,
                         layout.RATELIMIT, layout.POL_VAL, layout.POL_POLICY,
                         layout.POL_COUNTERS, layout.FQDN_KEY, layout.FQDN_VAL,
                         layout.FQDN_RULE, layout.DNS_REC],
           "exec.h": [layout.EXEC_KEY, layout.EXEC_EVENT, layout.EXEC_EVENT_ARGS],
           "connect.h": [layout.CONNECT_EVENT, layout.CONNECT_MGMT_KEY],
           "scope.h": [layout.SCOPE]}
#: The constants layout.py mirrors from each header (array lengths, flags, counter slots).
CONSTANTS = {"segment.h": {"SLOT_DIR": layout.SLOT_DIR, "SLOT_OBSERVED": layout.SLOT_OBSERVED,
                           "SLOT_EVENTS_SENT": layout.SLOT_EVENTS["sent"],
                           "SLOT_EVENTS_SUPPRESSED": layout.SLOT_EVENTS["suppressed"],
                           "SLOT_EVENTS_LOST": layout.SLOT_EVENTS["lost"],
                           "SLOT_FLOW_CACHE_HIT": layout.SLOT_FLOW_CACHE_HIT,
                           "SLOT_DNS_SENT": layout.SLOT_DNS["sent"],
                           "SLOT_DNS_LOST": layout.SLOT_DNS["lost"],
                           "N_SLOTS": layout.N_SLOTS,
                           "LAST_SEEN_GRANULARITY_NS": layout.LAST_SEEN_GRANULARITY_NS,
                           "FQDN_PATTERN_LEN": layout.FQDN_PATTERN_LEN,
                           "DNS_CAPTURE_MAX": layout.DNS_CAPTURE_MAX,
                           "POL_NAME_LEN": layout.POL_NAME_LEN},
             "exec.h": {"EXEC_DENIED": layout.EXEC_DENIED, "EXEC_LSM": layout.EXEC_LSM,
                        "EXEC_INTERP": layout.EXEC_INTERP,
                        "EXEC_ARGS_LEN": layout.EXEC_ARGS_LEN},
             "connect.h": {"CONNECT_DENIED": layout.CONNECT_DENIED},
             "scope.h": {}}
PRELUDE = ('#include "vmlinux.h"\n#include <bpf/bpf_helpers.h>\n#include <bpf/bpf_tracing.h>\n'
           '#include <bpf/bpf_core_read.h>\n#include "common.h"\n')


def assertions(mirror: CStruct) -> list[str]:
    s = f"struct {mirror.c_name}"
    out = [f'_Static_assert(__builtin_offsetof({s}, {name}) == {off}, '
           f'"{mirror.c_name}.{name}: layout.py says offset {off}");'
           for name, off in mirror.offsets().items()]
    if mirror.whole:
        size = mirror.at + mirror.size
        out.append(f'_Static_assert(sizeof({s}) == {size}, '
                   f'"sizeof({s}): layout.py says {size}");')
    return out


def constant_assertions(constants: dict[str, int]) -> list[str]:
    return [f'_Static_assert({name} == {value}, "{name}: layout.py says {value}");'
            for name, value in constants.items()]


def compile_checks(header: str, lines: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    src = tmp_path / f"check_{header.replace('.', '_')}.c"
    src.write_text(PRELUDE + f'#include "{header}"\n' + "\n".join(lines) + "\n")
    return subprocess.run(["clang", "-target", "bpf", "-fsyntax-only", f"-I{BPF_DIR / 'build'}",
                           f"-I{BPF_DIR}", str(src)], capture_output=True, text=True,
                          check=False)


@pytest.fixture(scope="module", autouse=True)
def _toolchain() -> None:
    if not shutil.which("clang") or not (BPF_DIR / "build" / "vmlinux.h").is_file():
        pytest.skip("needs clang and bpf/build/vmlinux.h (make -C bpf)")


@pytest.mark.parametrize("header", sorted(HEADERS))
def test_python_layouts_match_the_c_headers(header: str, tmp_path: Path) -> None:
    lines = [a for mirror in HEADERS[header] for a in assertions(mirror)]
    lines += constant_assertions(CONSTANTS[header])
    out = compile_checks(header, lines, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]


def test_a_drifted_layout_is_caught(tmp_path: Path) -> None:
    """The check can fail: a mirror with one field moved, or a constant changed on one side,
    does not compile."""
    drifted = CStruct("exec_event", "<", [("ktime_ns", "Q"), ("dev", "Q"), ("ino", "Q")],
                      whole=False)
    out = compile_checks("exec.h", assertions(drifted), tmp_path)
    assert out.returncode != 0
    assert "exec_event.dev: layout.py says offset 8" in out.stderr
    drifted_constant = compile_checks("segment.h", constant_assertions(
        {"LAST_SEEN_GRANULARITY_NS": layout.LAST_SEEN_GRANULARITY_NS + 1}), tmp_path)
    assert drifted_constant.returncode != 0
    assert "LAST_SEEN_GRANULARITY_NS: layout.py says 1000001" in drifted_constant.stderr
