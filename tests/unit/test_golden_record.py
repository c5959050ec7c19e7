"""The golden record the harden role writes holds what attestation reads (files for the
expected profile, sysctl names for the agent's sysctl digest), and nothing else."""

import pytest
import yaml

from aegis_protocol.attestation import GOLDEN_SCHEMA, profile_from_golden
from harness import REPO

pytestmark = pytest.mark.unit
GOLDEN_TASKS = REPO / "roles" / "harden" / "tasks" / "golden.yml"


def _record_template() -> dict:
    tasks = yaml.safe_load(GOLDEN_TASKS.read_text())
    (record,) = [t["vars"]["harden_golden_record"] for t in tasks
                 if "harden_golden_record" in t.get("vars", {})]
    return record


def test_the_role_writes_only_what_profile_from_golden_reads():
    record = _record_template()
    assert record["schema"] == GOLDEN_SCHEMA
    assert sorted(record) == ["files", "role", "schema", "sysctl"]


def test_a_record_as_the_role_writes_it_gives_the_expected_profile():
    record = {"schema": GOLDEN_SCHEMA, "role": "aegis.fleet.harden",
              "files": {"/etc/ssh/sshd_config": "a" * 64, "/etc/fstab": None},
              "sysctl": {"kernel.kptr_restrict": "2", "kernel.yama.ptrace_scope": None}}
    profile = profile_from_golden(record)
    assert profile.golden == record["files"]
    assert profile.sysctl_digest is None  # the sysctl names expect nothing by themselves


@pytest.mark.parametrize(("record", "needle"), [
    ({"files": {}}, "not a golden record"),
    ({"schema": "aegis.golden/v0", "files": {}}, "not a golden record"),
    ({"schema": GOLDEN_SCHEMA}, "no \"files\" mapping"),
    ({"schema": GOLDEN_SCHEMA, "files": ["/etc/fstab"]}, "no \"files\" mapping"),
    ({"schema": GOLDEN_SCHEMA, "files": {}, "sysctl": ["kernel.kptr_restrict"]},
     "\"sysctl\" must map sysctl names"),
    ({"schema": GOLDEN_SCHEMA, "files": {}, "sysctl": {"kernel.kptr_restrict": 2}},
     "\"sysctl\" must map sysctl names"),
])
def test_a_malformed_record_says_what_is_wrong(record, needle):
    with pytest.raises(ValueError, match=needle):
        profile_from_golden(record)
