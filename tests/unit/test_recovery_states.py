"""Recovery job states (issue 14): only the table's transitions, each with a reason;
failed from any active step, trusted and failed final, awaiting-approval only from queued
and left only by an operator."""

from __future__ import annotations

import itertools

import pytest

from aegis_controller.recovery.states import (
    ALLOWED,
    IN_FLIGHT,
    JobState,
    JobTransitionRefused,
    in_flight,
    is_terminal,
    transition,
)

pytestmark = pytest.mark.unit

PATH = ["queued", "containing", "collecting", "replacing", "verifying", "enrolling", "trusted"]
ACTIVE = ["queued", "awaiting-approval", "containing", "collecting", "replacing", "verifying",
          "enrolling"]


def test_the_table_covers_every_state() -> None:
    assert set(ALLOWED) == set(JobState)


def test_a_job_goes_through_every_step_in_order() -> None:
    for before, after in itertools.pairwise(PATH):
        moved = transition(before, after, f"{after} done")
        assert (moved.before, moved.after, moved.reason) == (before, after, f"{after} done")


@pytest.mark.parametrize(("before", "after"), [
    ("containing", "trusted"), ("queued", "replacing"), ("collecting", "enrolling"),
    ("verifying", "replacing"), ("replacing", "containing"), ("enrolling", "queued")])
def test_skipping_or_going_back_is_refused(before: str, after: str) -> None:
    with pytest.raises(JobTransitionRefused, match=f"from {before} to {after} .from {before} "
                                                   "only to: "):
        transition(before, after, "skip")


@pytest.mark.parametrize("state", ACTIVE)
def test_failed_is_reachable_from_every_active_step(state: str) -> None:
    operator = state == "awaiting-approval"  # rejecting a held job is an operator's
    assert transition(state, "failed", "step error", operator=operator).after == "failed"


@pytest.mark.parametrize("final", ["trusted", "failed"])
@pytest.mark.parametrize("target", list(JobState))
def test_trusted_and_failed_are_final(final: str, target: JobState) -> None:
    with pytest.raises(JobTransitionRefused, match=f"{final} is final"):
        transition(final, target, "again", operator=True)
    assert is_terminal(final)


def test_a_failed_job_is_retried_as_a_new_job() -> None:
    with pytest.raises(JobTransitionRefused, match="retry as a new job; its node stays "
                                                   "quarantined"):
        transition("failed", "queued", "retry")


def test_awaiting_approval_only_from_queued_and_back_only_by_an_operator() -> None:
    assert transition("queued", "awaiting-approval", "breaker").after == "awaiting-approval"
    for state in ["containing", "collecting", "replacing", "verifying", "enrolling"]:
        with pytest.raises(JobTransitionRefused, match=f"from {state} to awaiting-approval"):
            transition(state, "awaiting-approval", "held")
    with pytest.raises(JobTransitionRefused, match="only an operator can approve"):
        transition("awaiting-approval", "queued", "approved by itself")
    with pytest.raises(JobTransitionRefused, match="only an operator can reject"):
        transition("awaiting-approval", "failed", "rejected")
    assert transition("awaiting-approval", "queued", "approved by alice",
                      operator=True).after == "queued"
    with pytest.raises(JobTransitionRefused, match="from awaiting-approval to containing"):
        transition("awaiting-approval", "containing", "start", operator=True)


def test_unknown_states_and_empty_reasons_are_refused_clearly() -> None:
    with pytest.raises(JobTransitionRefused, match="unknown recovery job state 'rebuilt' "
                                                   r"\(one of: queued, awaiting-approval"):
        transition("replacing", "rebuilt", "done")
    with pytest.raises(JobTransitionRefused, match="needs a reason"):
        transition("queued", "containing", "  ")


def test_in_flight_is_containing_to_enrolling() -> None:
    assert {s for s in JobState if in_flight(s)} == set(IN_FLIGHT) == {
        JobState.CONTAINING, JobState.COLLECTING, JobState.REPLACING, JobState.VERIFYING,
        JobState.ENROLLING}
    with pytest.raises(JobTransitionRefused, match="unknown"):
        in_flight("running")
