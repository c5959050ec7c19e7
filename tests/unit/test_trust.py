"""Trust states: allowed transitions only, and verdicts that name each mismatch."""

from __future__ import annotations

import pytest

from aegis_controller.trust import TransitionRefused, after_attestation, judge, transition
from aegis_protocol.attestation import (
    AttestationReport,
    ExpectedProfile,
    Measurement,
    bpf_summary,
    profile_from_document,
    reported_bpf,
)

pytestmark = pytest.mark.unit


def _report(**golden: str | None) -> AttestationReport:
    m = Measurement(kernel_release="6.1", boot_id="b", agent_version="0.1.0",
                    golden={f"/etc/{k}": v for k, v in golden.items()})
    return AttestationReport(node_id="n1", nonce="x" * 16, measured_at=0, measurement=m)


def test_transitions_outside_the_table_are_refused() -> None:
    assert transition("enrolled", "trusted", "ok").after == "trusted"
    with pytest.raises(TransitionRefused, match="from provisioning to trusted"):
        transition("provisioning", "trusted", "skip enrollment")
    with pytest.raises(TransitionRefused, match="only an operator"):
        transition("quarantined", "trusted", "attestation says fine")
    assert transition("quarantined", "trusted", "released", operator=True).after == "trusted"
    with pytest.raises(TransitionRefused):
        transition("retired", "trusted", "resurrect")


def test_judge_names_every_mismatch() -> None:
    expected = ExpectedProfile(golden={"/etc/a": "1" * 64, "/etc/b": "2" * 64},
                               agent_version="0.1.0")
    assert judge(_report(a="1" * 64, b="2" * 64), expected) == []
    problems = judge(_report(a="9" * 64), expected)
    assert problems == ["golden /etc/a: expected 111111111111…, got 999999999999…",
                        "golden /etc/b: expected 222222222222…, got missing from the report"]


def test_judge_compares_bpf_program_tags_and_modes_only() -> None:
    bpf: list[dict[str, str | int]] = [
        {"component": "exec", "mode": "lsm"},
        {"pin": "exec/exec_lsm", "kind": "prog", "type": 29, "tag": "aa" * 8, "name": "x"},
        {"pin": "exec/link_exec_lsm", "kind": "link", "type": 2, "attach_type": 27}]
    report = _report()
    report.measurement.bpf = bpf
    assert bpf_summary(bpf) == {"mode:exec": "lsm", "prog:exec/exec_lsm": "aa" * 8}
    assert judge(report, ExpectedProfile(bpf=bpf_summary(bpf))) == []
    expected = ExpectedProfile(bpf={"mode:exec": "lsm", "prog:exec/exec_lsm": "bb" * 8,
                                    "prog:segment/xdp_segment": "cc" * 8})
    assert judge(report, expected) == [
        f"bpf prog:exec/exec_lsm: expected {'bb' * 8}, got {'aa' * 8}",
        f"bpf prog:segment/xdp_segment: expected {'cc' * 8}, got not loaded"]


def test_verdicts_move_states() -> None:
    assert after_attestation("enrolled", []).after == "trusted"
    assert after_attestation("trusted", ["x"]).after == "suspect"
    # only a heartbeat-deadline suspicion clears itself; a mismatch needs an operator
    assert after_attestation("suspect", [], "no heartbeat for 300 s").after == "trusted"
    assert after_attestation("suspect", [], "attestation mismatch: golden /etc/a") is None
    # a mismatch turns a deadline's suspicion into a measurement's (which no match clears)
    deepened = after_attestation("suspect", ["x"], "no heartbeat for 300 s")
    assert deepened is not None and deepened.reason.startswith("attestation mismatch")
    assert after_attestation("suspect", ["x"], "attestation mismatch: y") is None
    assert after_attestation("trusted", []) is None
    assert after_attestation("quarantined", []) is None  # stays until an operator releases


def test_a_profile_comes_from_a_golden_record_or_an_expected_profile() -> None:
    golden = {"schema": "aegis.golden/v1", "files": {"/etc/a": "1" * 64}, "sysctl": {}}
    assert profile_from_document(golden) == ExpectedProfile(golden={"/etc/a": "1" * 64})
    assert profile_from_document({"agent_version": "0.1.0"}).agent_version == "0.1.0"
    with pytest.raises(ValueError, match="no \"files\" mapping"):
        profile_from_document({"schema": "aegis.golden/v1"})
    with pytest.raises(ValueError):
        profile_from_document({"sysctl": {}})  # neither: extra keys are refused


def test_pinned_bpf_comes_from_the_last_attestation() -> None:
    with pytest.raises(ValueError, match="'n1' has not attested yet"):
        reported_bpf("n1", None)
    m = _report().measurement
    with pytest.raises(ValueError, match="'n1' reported no Aegis BPF programs"):
        reported_bpf("n1", m.model_dump_json())
    m.bpf = [{"component": "segment", "mode": "xdp"}]
    assert reported_bpf("n1", m.model_dump_json()) == {"mode:segment": "xdp"}


def test_lost_events_over_the_threshold_make_a_node_suspect_once() -> None:
    from aegis_controller.trust import after_lost_events

    assert after_lost_events("trusted", "ok", {"exec": 6, "spool": 4}, 10) is None
    t = after_lost_events("trusted", "ok", {"exec": 8, "connect": 0, "spool": 3}, 10)
    assert t is not None and t.after == "suspect"
    assert t.reason == ("events lost: 11 since the previous heartbeat (exec 8, spool 3; "
                        "threshold 10)")
    assert after_lost_events("enrolled", "x", {"segment": 1}, 0).after == "suspect"  # type: ignore[union-attr]
    # a deadline's suspicion becomes this one (an attestation would clear the deadline's)
    t = after_lost_events("suspect", "no heartbeat for 200 s", {"exec": 11}, 10)
    assert t is not None and t.reason.startswith("events lost: 11")
    # a measurement's stays; nodes already out of trust are not moved
    assert after_lost_events("suspect", "attestation mismatch: x", {"exec": 11}, 10) is None
    for state in ("quarantined", "rebuilding", "retired", "provisioning"):
        assert after_lost_events(state, "", {"exec": 11}, 10) is None
    # and it is not cleared by a matching attestation
    assert after_attestation("suspect", [], t.reason) is None
