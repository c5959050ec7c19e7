"""The golden record the harden role writes holds what attestation reads (files for the
expected profile, sysctl names for the agent's sysctl digest), and nothing else."""

import pytest
import yaml

from aegis_protocol.attestation import GOLDEN_SCHEMA, profile_from_golden
from ansible_collections.aegis.fleet.plugins.modules import golden_record

pytestmark = pytest.mark.unit


def test_the_role_writes_only_what_profile_from_golden_reads(tmp_path):
    """The record as the role's module (aegis.fleet.golden_record) makes it, read back by
    the protocol's reader."""
    managed = tmp_path / "sshd_config"
    managed.write_text("PermitRootLogin no\n")
    record = golden_record.measure([str(managed), str(tmp_path / "missing")], "aegis.fleet.harden")
    assert record["schema"] == GOLDEN_SCHEMA
    assert sorted(record) == ["files", "role", "schema", "sysctl"]
    profile = profile_from_golden(yaml.safe_load(golden_record.render(record)))
    assert profile.golden == {str(managed): record["files"][str(managed)],
                              str(tmp_path / "missing"): None}
    assert len(record["files"][str(managed)]) == 64


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
