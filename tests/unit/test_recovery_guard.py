"""Recovery guard rails (issue 14): every rule of :func:`decide`, simulated over the pure
functions by stepping time (no engine exists yet), and bad settings refused clearly."""

from __future__ import annotations

import dataclasses
import math

import pytest

from aegis_controller.recovery.guard import (
    Action,
    Decision,
    GuardRails,
    GuardRailsInvalid,
    decide,
    eligible_at,
)
from aegis_controller.recovery.snapshot import Cause, FleetNode, JobView
from aegis_controller.recovery.states import JobState, transition

pytestmark = pytest.mark.unit

STEPS = ["collecting", "replacing", "verifying", "enrolling", "trusted"]
#: A node's trust state while its job is in a step (what the engine will set).
NODE_STATE = {"replacing": "rebuilding", "verifying": "rebuilding", "enrolling": "enrolled",
              "trusted": "trusted"}


class Fleet:
    """The fleet and its recovery jobs, moved only through the state machine and decide()."""

    def __init__(self, roles: dict[str, str], rails: GuardRails | None = None) -> None:
        self.role = roles
        self.state = dict.fromkeys(roles, "trusted")
        self.jobs: dict[str, JobView] = {}
        self.rails = rails or GuardRails()
        self.now = 0.0

    def nodes(self) -> list[FleetNode]:
        return [FleetNode(n, self.role[n], s) for n, s in self.state.items()]

    def flag(self, node: str, cause: Cause = Cause.COMPROMISED) -> str:
        self.state[node] = "quarantined" if cause == Cause.COMPROMISED else "suspect"
        job_id = f"j{len(self.jobs) + 1}"
        self.jobs[job_id] = JobView(job_id, node, cause, JobState.QUEUED, self.now)
        return job_id

    def _move(self, job_id: str, target: str, reason: str, *, operator: bool = False,
              **changes: object) -> None:
        job = self.jobs[job_id]
        moved = transition(job.state, target, reason, operator=operator)
        self.jobs[job_id] = dataclasses.replace(job, state=moved.after, **changes)

    def tick(self) -> dict[str, Decision]:
        """decide() for every queued job, oldest first, applying starts and holds."""
        decided = {}
        for job_id in sorted(self.jobs, key=lambda j: int(j[1:])):
            job = self.jobs[job_id]
            if job.state != JobState.QUEUED:
                continue
            decision = decide(job, self.nodes(), self.jobs.values(), self.rails, self.now)
            decided[job_id] = decision
            if decision.next_state == JobState.CONTAINING:
                self._move(job_id, "containing", decision.reason, started_at=self.now)
            elif decision.next_state == JobState.AWAITING_APPROVAL:
                self._move(job_id, "awaiting-approval", decision.reason)
        return decided

    def step(self, job_id: str, until: str = "trusted") -> None:
        while self.jobs[job_id].state != until:
            state = self.jobs[job_id].state
            target = STEPS[STEPS.index(state) + 1] if state in STEPS else STEPS[0]
            self.now += 60
            ended = {"ended_at": self.now} if target == "trusted" else {}
            self._move(job_id, target, f"{target} done", **ended)
            self.state[self.jobs[job_id].node_id] = NODE_STATE.get(
                target, self.state[self.jobs[job_id].node_id])

    def fail(self, job_id: str) -> None:
        step = self.jobs[job_id].state
        self.now += 10
        self._move(job_id, "failed", f"{step} failed", ended_at=self.now, failed_step=step)
        self.state[self.jobs[job_id].node_id] = "quarantined"  # never in service half-built

    def approve(self, job_id: str, operator: str = "alice") -> None:
        self._move(job_id, "queued", f"approved by {operator}", operator=True,
                   approved_by=operator)

    def in_state(self, state: str) -> list[str]:
        return sorted(j for j, v in self.jobs.items() if v.state == state)

    def flying(self) -> list[str]:
        return sorted(j for j, v in self.jobs.items() if v.in_flight)


FIVE = {f"n{i}": "web" for i in range(1, 6)}
THREE = {"n1": "web", "n2": "web", "n3": "web"}


def test_quarantine_storm_replaces_at_most_the_budget_then_one_at_a_time_on_approval() -> None:
    fleet = Fleet(FIVE)
    decided = {}
    for node in ["n1", "n2", "n3", "n4"]:  # 4 of 5 flagged within seconds
        fleet.flag(node)
        decided.update(fleet.tick())
        fleet.now += 5
    assert fleet.flying() == ["j1"]  # the budget: max_in_flight 1
    assert fleet.in_state("awaiting-approval") == ["j2", "j3", "j4"]
    for job_id in ["j2", "j3", "j4"]:
        assert decided[job_id].action == Action.HOLD
        assert decided[job_id].reason.startswith("circuit breaker: ")
        assert "; breaker_threshold 2): automatic rebuilds stopped; approve with " \
               f"`aegis-controller recovery approve {job_id}`" in decided[job_id].reason
    assert "circuit breaker: 4 nodes quarantined within 600 s (n1, n2, n3, n4;" \
           in decided["j4"].reason
    fleet.step("j1")  # the replacement in flight completes, attested trusted
    assert fleet.tick() == {} and fleet.in_state("awaiting-approval") == ["j2", "j3", "j4"]
    for job_id in ["j2", "j3", "j4"]:
        fleet.approve(job_id)
    for expected in ["j2", "j3", "j4"]:
        decided = fleet.tick()
        assert fleet.flying() == [expected], decided
        node = fleet.jobs[expected].node_id
        assert decided[expected].reason.startswith(f"compromised node {node}: approved by "
                                                   "alice (0 of 1 in flight")
        for waiting in set(decided) - {expected}:
            assert decided[waiting].action == Action.WAIT
            assert decided[waiting].reason.startswith(
                f"1 replacement(s) in flight (max_in_flight 1; job {expected}, node ")
        fleet.step(expected, until="enrolling")
        assert all(d.action == Action.WAIT for d in fleet.tick().values())  # not yet trusted
        fleet.step(expected)
    assert fleet.in_state("trusted") == ["j1", "j2", "j3", "j4"]
    assert set(fleet.state.values()) == {"trusted"}


def test_a_storm_flagged_all_at_once_replaces_nothing_automatically() -> None:
    fleet = Fleet(FIVE)
    for node in ["n1", "n2", "n3", "n4"]:
        fleet.flag(node)
    decided = fleet.tick()
    assert fleet.flying() == [] and fleet.in_state("awaiting-approval") == ["j1", "j2", "j3", "j4"]
    assert all("circuit breaker: 4 nodes" in d.reason for d in decided.values())


def test_quarantined_again_within_the_cooldown_is_not_replaced_again_automatically() -> None:
    fleet = Fleet(THREE)
    fleet.flag("n1")
    fleet.tick()
    fleet.step("j1")
    trusted_at = fleet.now
    fleet.now = trusted_at + 600
    fleet.flag("n1")
    decided = fleet.tick()
    assert fleet.in_state("awaiting-approval") == ["j2"] and fleet.flying() == []
    assert decided["j2"].reason.startswith(
        "node n1 was quarantined again 600 s after its last recovery (job j1, trusted): 1 "
        "attempt(s) within cooldown_s 1800 (max_attempts_per_node 1): not replaced again "
        "automatically, it would loop; approve with")
    fleet.approve("j2")  # a human decides: then it is replaced
    assert fleet.tick()["j2"].action == Action.START
    fleet.step("j2")
    fleet.now += 1801  # past the cool-down a new quarantine is handled automatically
    fleet.flag("n1")
    assert fleet.tick()["j3"].action == Action.START


def test_a_retry_after_a_failed_attempt_counts_against_the_budget() -> None:
    fleet = Fleet(THREE, GuardRails(max_attempts_per_node=2))
    fleet.flag("n1")
    fleet.tick()
    fleet.fail("j1")  # failed in containing: nothing replaced, node still quarantined
    assert fleet.state["n1"] == "quarantined"
    fleet.flag("n1")
    assert fleet.tick()["j2"].action == Action.START
    fleet.fail("j2")
    fleet.flag("n1")
    assert "2 attempt(s) within cooldown_s 1800 (max_attempts_per_node 2)" \
        in fleet.tick()["j3"].reason


def test_never_the_last_node_of_a_role() -> None:
    fleet = Fleet({"db1": "db", "web1": "web", "web2": "web", "web3": "web", "app1": "app",
                   "app2": "app", "app3": "app"})
    fleet.flag("db1")
    decided = fleet.tick()
    assert decided["j1"].action == Action.HOLD
    assert decided["j1"].reason.startswith("node db1 is the last node of role db (no other db "
                                           "node is trusted): never replaced automatically")
    fleet.approve("j1")  # a human decides (the role's only data may be on it)
    assert fleet.tick()["j1"].action == Action.START
    fleet.step("j1")
    fleet.now += 3600  # not the breaker: much later
    fleet.state["web2"] = "suspect"  # the other web nodes: one not trusted, one retired
    fleet.state["web3"] = "retired"
    fleet.flag("web1")
    decided = fleet.tick()
    assert decided["j2"].action == Action.HOLD
    assert decided["j2"].reason.startswith("node web1 is the last node of role web")


def test_the_next_replacement_starts_only_after_the_previous_is_attested_trusted() -> None:
    fleet = Fleet(FIVE)
    fleet.flag("n1")
    fleet.tick()
    fleet.step("j1", until="enrolling")  # the new machine is up and enrolled, not attested
    fleet.now += 3600  # far apart: no breaker
    fleet.flag("n2")
    decided = fleet.tick()["j2"]
    assert decided.action == Action.WAIT and decided.not_before is None
    assert decided.reason.startswith("2 of 5 nodes unavailable (40 % > max_unavailable_fraction "
                                     "0.34): waits for the replacement in flight (job j1")
    fleet.step("j1")
    assert fleet.tick()["j2"].action == Action.START


def test_a_free_slot_is_not_enough_while_the_in_flight_count_is_full() -> None:
    fleet = Fleet({f"n{i}": "web" for i in range(1, 11)})
    fleet.flag("n1")
    fleet.tick()
    fleet.step("j1", until="verifying")
    fleet.now += 3600
    fleet.flag("n2")
    decided = fleet.tick()["j2"]
    assert decided.reason.startswith("1 replacement(s) in flight (max_in_flight 1; job j1, "
                                     "node n1, is verifying): a slot frees when a "
                                     "replacement is attested trusted")
    fleet.rails = GuardRails(max_in_flight=2)
    assert fleet.tick()["j2"].action == Action.START
    assert fleet.flying() == ["j1", "j2"]


def test_a_failed_replacement_stops_automatic_rebuilds() -> None:
    fleet = Fleet(FIVE)
    fleet.flag("n1")
    fleet.tick()
    fleet.step("j1", until="replacing")
    fleet.fail("j1")
    assert fleet.state["n1"] == "quarantined"
    fleet.now += 3600
    fleet.state["n1"] = "retired"  # say the operator retired it; a failed pipeline remains
    fleet.flag("n2")
    decided = fleet.tick()["j2"]
    assert decided.action == Action.HOLD
    assert decided.reason.startswith("the previous replacement (job j1, node n1) failed in "
                                     "replacing: automatic rebuilds stopped until an operator "
                                     "approves one")
    fleet.approve("j2")
    assert fleet.tick()["j2"].action == Action.START
    fleet.step("j2")
    fleet.now += 3600
    fleet.flag("n3")  # the last replacement succeeded: automatic again
    assert fleet.tick()["j3"].action == Action.START


def test_too_much_of_the_fleet_unavailable_holds_when_nothing_can_bring_it_back() -> None:
    fleet = Fleet(THREE)
    fleet.flag("n1")
    assert fleet.tick()["j1"].action == Action.START  # 1 of 3 (33 %) out is within 34 %
    fleet.step("j1")
    fleet.now += 3600
    fleet.state["n3"] = "suspect"  # out of service, not (yet) a recovery job
    fleet.flag("n2")
    decided = fleet.tick()["j2"]
    assert decided.action == Action.HOLD
    assert decided.reason.startswith("2 of 3 nodes unavailable (67 % > max_unavailable_fraction "
                                     "0.34): too much of the fleet is out for automatic "
                                     "rebuilds; approve with")


def test_the_rate_limit_waits_until_the_hour_has_room() -> None:
    rails = GuardRails(max_per_hour=2, max_in_flight=5, breaker_threshold=10)
    fleet = Fleet({f"n{i}": "web" for i in range(1, 11)}, rails)
    for node in ["n1", "n2"]:
        fleet.flag(node)
        fleet.tick()
        fleet.step(fleet.in_state("containing")[0])
    fleet.flag("n3")
    decided = fleet.tick()["j3"]
    first_start = 0.0
    assert decided.action == Action.WAIT and decided.not_before == first_start + 3600
    assert decided.reason == (f"2 replacements started in the last hour (max_per_hour 2): next "
                              f"in {3600 - fleet.now:.0f} s")
    fleet.now = decided.not_before
    assert fleet.tick()["j3"].action == Action.START


def test_an_unhealthy_node_waits_the_startup_timeout_a_compromised_one_does_not() -> None:
    fleet = Fleet({f"n{i}": "web" for i in range(1, 11)})
    silent = fleet.flag("n1", Cause.UNHEALTHY)
    assert eligible_at(fleet.jobs[silent], fleet.rails) == 600
    fleet.now = 599
    decided = fleet.tick()[silent]
    assert decided.action == Action.WAIT and decided.not_before == 600
    assert decided.reason == ("node n1 is silent (unhealthy) for 599 s: replaced after "
                              "startup_timeout_s 600 (in 1 s) unless it comes back")
    compromised = fleet.flag("n2")
    assert eligible_at(fleet.jobs[compromised], fleet.rails) == 599
    assert fleet.tick()[compromised].action == Action.START
    fleet.step(compromised)
    fleet.now = 600 + 3600
    assert fleet.tick()[silent].action == Action.START


def test_approval_mode_holds_every_job_and_an_approved_job_still_waits_its_turn() -> None:
    fleet = Fleet(FIVE, GuardRails(approval_mode=True))
    fleet.flag("n1")
    decided = fleet.tick()["j1"]
    assert decided.next_state == JobState.AWAITING_APPROVAL
    assert decided.reason == ("approval mode: every recovery job waits for an operator; approve "
                              "with `aegis-controller recovery approve j1` (or reject it)")
    fleet.approve("j1")
    assert fleet.tick()["j1"].next_state == JobState.CONTAINING
    fleet.now += 3600
    fleet.flag("n2")
    fleet.tick()
    fleet.approve("j2")
    assert fleet.tick()["j2"].action == Action.WAIT  # j1 is in flight
    assert fleet.jobs["j2"].state == JobState.QUEUED


def test_decide_refuses_what_it_cannot_judge() -> None:
    fleet = Fleet(THREE)
    fleet.flag("n1")
    fleet.tick()
    with pytest.raises(ValueError, match="recovery job j1 is containing: only a queued job"):
        decide(fleet.jobs["j1"], fleet.nodes(), [], fleet.rails, fleet.now)
    ghost = JobView("j9", "n9", Cause.COMPROMISED, JobState.QUEUED, 0)
    with pytest.raises(ValueError, match="node 'n9' of recovery job j9 is not in the fleet"):
        decide(ghost, fleet.nodes(), [], fleet.rails, 0)
    twin = JobView("j8", "n1", Cause.COMPROMISED, JobState.QUEUED, 0)
    assert decide(twin, fleet.nodes(), fleet.jobs.values(), fleet.rails, 0) == Decision(
        Action.WAIT, "job j1 for node n1 is already containing")


def test_the_defaults_brake_and_each_has_its_reason() -> None:
    rails = GuardRails()
    assert dataclasses.asdict(rails) == {
        "max_in_flight": 1, "max_unavailable_fraction": 0.34, "max_per_hour": 6,
        "breaker_threshold": 2, "breaker_window_s": 600, "max_attempts_per_node": 1,
        "cooldown_s": 1800, "startup_timeout_s": 600, "approval_mode": False}
    doc = GuardRails.__doc__ or ""
    assert "kubernetes-sigs/cluster-api#7353" in doc
    for field in dataclasses.fields(rails):
        assert f"``{field.name} = " in doc, field.name


@pytest.mark.parametrize(("settings", "message"), [
    ({"max_unavailable_fraction": 0}, r"max_unavailable_fraction must be a fraction of the "
                                      r"fleet in \(0, 1\] \(e.g. 0.34 for a third\), got 0"),
    ({"max_unavailable_fraction": 1.5}, r"in \(0, 1\] .*got 1.5"),
    ({"max_unavailable_fraction": math.nan}, r"in \(0, 1\] .*got nan"),
    ({"max_in_flight": 0}, "max_in_flight must be at least 1, got 0 .to stop automatic "
                           "rebuilds, set approval_mode=True."),
    ({"max_per_hour": -1}, "max_per_hour must be at least 1, got -1"),
    ({"breaker_threshold": 0}, "breaker_threshold must be at least 1"),
    ({"max_attempts_per_node": 1.5}, "max_attempts_per_node must be a whole number, got 1.5"),
    ({"max_in_flight": True}, "max_in_flight must be a whole number, got True"),
    ({"breaker_window_s": 0}, "breaker_window_s must be more than 0 seconds, got 0"),
    ({"cooldown_s": -1}, "cooldown_s must be 0 or more seconds, got -1"),
    ({"startup_timeout_s": math.inf}, "startup_timeout_s must be a finite number of seconds"),
    ({"approval_mode": "yes"}, "approval_mode must be true or false, got 'yes'"),
])
def test_bad_settings_are_refused_naming_what_to_fix(settings: dict, message: str) -> None:
    with pytest.raises(GuardRailsInvalid, match="invalid recovery guard rails: .*" + message):
        GuardRails(**settings)


def test_every_bad_setting_is_named_at_once_and_unknown_names_are_refused() -> None:
    with pytest.raises(GuardRailsInvalid) as refused:
        GuardRails(max_in_flight=0, cooldown_s=-5)
    assert "max_in_flight must be" in str(refused.value) and "cooldown_s must be" \
        in str(refused.value)
    with pytest.raises(GuardRailsInvalid, match="unknown recovery guard rail.s. max_inflight "
                                                r"\(known: max_in_flight, "):
        GuardRails.from_mapping({"max_inflight": 2})
    assert GuardRails.from_mapping({"cooldown_s": 0}).cooldown_s == 0
    assert GuardRails(cooldown_s=0, startup_timeout_s=0).startup_timeout_s == 0
