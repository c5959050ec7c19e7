"""Label policy entries in the real segment programs (BPF_PROG_TEST_RUN on crafted
packets): explicit rules, the pair default, observe mode passing and counting would-be
drops, the switch to enforce as one map value, per-edge counters, and the management
path above every policy. The controller-to-agent path with real traffic:
test_label_policy_fleet.py."""

from __future__ import annotations

import os

import pytest
from test_segment_filter import drained, nonzero, passes, seg, syn  # noqa: F401

from aegis_agent.bpf import SegmentFilter
from aegis_agent.bpf.policy_edges import PolicyEntryError

pytestmark = pytest.mark.integration

WEB, DB, OTHER = "192.0.2.1", "192.0.2.2", "192.0.2.9"


def _install(filt: SegmentFilter, mode: str = "enforce", action: str = "allow") -> dict:
    return filt.label_policies.apply({"web-db": mode}, [
        f"web-db {action} {WEB} -> {DB} tcp/5432", f"web-db default {WEB} -> {DB}"])


def _edges(filt: SegmentFilter) -> dict[str, dict]:
    return {e["edge"]: e for e in filt.label_policies.report()["web-db"]["edges"]}


def test_allow_rule_passes_its_port_and_the_pair_default_drops_the_rest(seg):  # noqa: F811
    assert _install(seg) == {"added": 2, "kept": 0, "removed": 0}
    assert passes(seg, syn(WEB, 5432, dst=DB))
    assert not passes(seg, syn(WEB, 5433, dst=DB))
    assert not passes(seg, syn(OTHER, 5432, dst=DB))  # not a source of the policy
    assert nonzero(seg) == {"pass_edge": 1, "drop_policy": 1, "drop_no_edge": 1}
    assert [e.verdict for e in drained(seg)] == ["drop_policy", "drop_no_edge"]
    report = seg.label_policies.report()["web-db"]
    assert report["mode"] == "enforce"
    assert (report["allowed_packets"], report["dropped_packets"],
            report["observed_packets"]) == (1, 1, 0)
    edges = _edges(seg)
    assert edges[f"allow {WEB} -> {DB} tcp/5432"]["allowed_packets"] == 1
    assert edges[f"allow {WEB} -> {DB} tcp/5432"]["allowed_bytes"] == len(syn(WEB, 5432,
                                                                             dst=DB))
    assert edges[f"default {WEB} -> {DB}"]["dropped_packets"] == 1


def test_observe_passes_would_be_drops_and_enforce_drops_them_without_reattach(seg):  # noqa: F811
    _install(seg, "observe")
    assert passes(seg, syn(WEB, 5433, dst=DB))  # would be dropped: passed, counted
    assert passes(seg, syn(WEB, 5432, dst=DB))
    assert not passes(seg, syn(OTHER, 5433, dst=DB))  # no policy's pair: the default drop
    report = seg.label_policies.report()["web-db"]
    assert (report["mode"], report["allowed_packets"], report["dropped_packets"],
            report["observed_packets"]) == ("observe", 1, 0, 1)
    events = drained(seg)
    assert [(e.verdict, e.observed, e.policy) for e in events] == [
        ("drop_policy", True, "web-db"), ("drop_no_edge", False, None)]
    seg.label_policies.set_mode("web-db", "enforce")  # (attached filter: the fleet test)
    assert not passes(seg, syn(WEB, 5433, dst=DB))
    report = seg.label_policies.report()["web-db"]
    assert (report["mode"], report["dropped_packets"], report["observed_packets"]) == (
        "enforce", 1, 1)
    # the controller's next push (observe again) is one value too; counters go on
    assert _install(seg, "observe") == {"added": 0, "kept": 2, "removed": 0}
    assert passes(seg, syn(WEB, 5433, dst=DB))
    assert seg.label_policies.report()["web-db"]["observed_packets"] == 2


def test_drop_rule_beats_a_granted_edge_but_not_the_management_path(seg):  # noqa: F811
    seg.grant(f"{WEB} -> {DB} tcp/5432")
    _install(seg, action="drop")
    assert not passes(seg, syn(WEB, 5432, dst=DB))
    seg.quarantine(False, management=[f"{WEB} tcp/5432"])
    assert passes(seg, syn(WEB, 5432, dst=DB))  # the management path is never cut
    assert nonzero(seg) == {"drop_policy": 1, "pass_mgmt": 1}
    assert seg.label_policies.report()["web-db"]["dropped_packets"] == 1


def test_log_rule_passes_and_reports_each_packet(seg):  # noqa: F811
    _install(seg, action="log")
    assert passes(seg, syn(WEB, 5432, dst=DB))
    (ev,) = drained(seg)
    assert (ev.verdict, ev.dport, ev.observed, ev.policy) == ("pass_edge", 5432, False,
                                                              "web-db")


def test_a_new_set_replaces_the_old_and_an_empty_set_removes_everything(seg):  # noqa: F811
    _install(seg)
    assert passes(seg, syn(WEB, 5432, dst=DB))
    out = seg.label_policies.apply({"web-db": "enforce"}, [
        f"web-db allow {OTHER} -> {DB} tcp/5432", f"web-db default {OTHER} -> {DB}"])
    assert out == {"added": 2, "kept": 0, "removed": 2}
    assert not passes(seg, syn(WEB, 5432, dst=DB))  # the old source is gone: no edge
    assert passes(seg, syn(OTHER, 5432, dst=DB))
    assert seg.label_policies.apply({}, []) == {"added": 0, "kept": 0, "removed": 2}
    assert seg.label_policies.report() == {}
    assert not passes(seg, syn(OTHER, 5432, dst=DB))
    assert nonzero(seg)["drop_no_edge"] == 2


def test_bad_entries_are_refused_before_anything_is_written(seg):  # noqa: F811
    _install(seg)
    for modes, entries, words in (
            ({"web-db": "enforce"}, [f"web-db permit {WEB} -> {DB} tcp/5432"], "permit"),
            ({"web-db": "enforce"}, [f"web-db allow 10.0.0.0/24 -> {DB} tcp/5432"],
             "single addresses"),
            ({}, [f"web-db allow {WEB} -> {DB} tcp/5432"], "has no mode"),
            ({"web-db": "strict"}, [], "observe or enforce")):
        with pytest.raises(PolicyEntryError, match=words):
            seg.label_policies.apply(modes, entries)
    assert len(_edges(seg)) == 2
    assert passes(seg, syn(WEB, 5432, dst=DB))



def test_label_policies_survive_a_migration_of_older_pins(seg):  # noqa: F811
    """Pins of an older build (stand-in: this build's with seg_mgmt_nets unpinned) are
    recreated with the label policies carried over; their counters restart."""
    _install(seg, "observe")
    assert passes(seg, syn(WEB, 5433, dst=DB))
    seg.close()
    os.unlink(seg.pin_dir / "seg_mgmt_nets")
    again = SegmentFilter(None, seg.pin_dir, event_rate=0)
    assert again.load() is False
    try:
        report = again.label_policies.report()["web-db"]
        assert (report["mode"], len(report["edges"]), report["observed_packets"]) == (
            "observe", 2, 0)
        assert passes(again, syn(WEB, 5433, dst=DB))
        assert passes(again, syn(WEB, 5432, dst=DB))
        again.label_policies.set_mode("web-db", "enforce")
        assert not passes(again, syn(WEB, 5433, dst=DB))
        assert not passes(again, syn(OTHER, 5432, dst=DB))
    finally:
        again.close()


def test_a_reverted_segment_policy_keeps_the_label_policies(seg):  # noqa: F811
    """The timed confirmation's revert (restore of a snapshot taken before the controller's
    order) leaves the label policies installed and switched on."""
    snap = seg.snapshot()
    _install(seg)
    seg.restore(snap)
    assert passes(seg, syn(WEB, 5432, dst=DB))
    assert not passes(seg, syn(WEB, 5433, dst=DB))
    assert nonzero(seg) == {"pass_edge": 1, "drop_policy": 1}
