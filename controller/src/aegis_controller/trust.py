"""Trust states of a node and how attestation verdicts move it between them.

    provisioning -> enrolled -> trusted <-> suspect -> quarantined -> rebuilding -> retired

Every transition carries a reason; a transition that is not in the table is refused, so
a bug or a forged request can never, say, take a quarantined node straight to trusted
(release is an explicit operator action).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aegis_protocol.attestation import AttestationReport, ExpectedProfile, bpf_summary

from .nodes import NodeState

_S = NodeState
ALLOWED: dict[NodeState, set[NodeState]] = {
    _S.PROVISIONING: {_S.ENROLLED, _S.RETIRED},
    _S.ENROLLED: {_S.TRUSTED, _S.SUSPECT, _S.QUARANTINED, _S.RETIRED},
    # -> enrolled: re-enrolled with a new key, trust is to be re-established
    _S.TRUSTED: {_S.ENROLLED, _S.SUSPECT, _S.QUARANTINED, _S.REBUILDING, _S.RETIRED},
    # -> suspect: a deadline's suspicion becomes a measurement's on a mismatch
    _S.SUSPECT: {_S.SUSPECT, _S.TRUSTED, _S.QUARANTINED, _S.REBUILDING, _S.RETIRED,
                 _S.PROVISIONING},
    _S.QUARANTINED: {_S.TRUSTED, _S.REBUILDING, _S.RETIRED, _S.PROVISIONING},
    _S.REBUILDING: {_S.ENROLLED, _S.RETIRED},  # -> enrolled: the rebuilt node enrolls
    _S.RETIRED: {_S.PROVISIONING},
}
#: Transitions only an operator may make: releasing a quarantined node, and letting a
#: suspect, quarantined or retired node enroll again (back to provisioning).
OPERATOR_ONLY = frozenset({(_S.QUARANTINED, _S.TRUSTED), (_S.SUSPECT, _S.PROVISIONING),
                           (_S.QUARANTINED, _S.PROVISIONING), (_S.RETIRED, _S.PROVISIONING)})


class Suspicion(StrEnum):
    """Why a node is suspect: the start of the reason stored with the state. Only a
    heartbeat-deadline suspicion clears itself on a matching attestation; a measurement
    mismatch is cleared by an operator (``node trust``) or by a rebuild, since a node
    whose measurement was wrong once may report whatever is expected next."""

    MEASUREMENT = "attestation mismatch"
    DEADLINE = "no heartbeat"
    #: the node's agent lost events (full ring buffers, spool past its bound): what it
    #: did meanwhile is not on record, so an operator clears it, as for a mismatch
    LOST_EVENTS = "events lost"


def suspicion_of(reason: str | None) -> Suspicion | None:
    """The kind of suspicion a stored reason records (None: not a suspicion)."""
    return next((s for s in Suspicion if (reason or "").startswith(s.value)), None)


class TransitionRefused(ValueError):
    pass


@dataclass(frozen=True)
class Transition:
    before: NodeState
    after: NodeState
    reason: str


def transition(current: str, target: str, reason: str, *, operator: bool = False) -> Transition:
    if target not in ALLOWED.get(current, set()):  # type: ignore[call-overload]
        raise TransitionRefused(f"a node cannot go from {current} to {target}")
    if (current, target) in OPERATOR_ONLY and not operator:
        if target == _S.TRUSTED:
            raise TransitionRefused("only an operator can release a quarantined node")
        raise TransitionRefused(f"only an operator can let a {current} node enroll again "
                                "(aegis-controller node reenroll NODE --reason ...)")
    return Transition(NodeState(current), NodeState(target), reason)


def missed_deadline(current: str, silent_for: int, deadline: int) -> Transition:
    """A watched node silent past its heartbeat deadline becomes suspect (a suspicion a
    later matching attestation clears)."""
    return transition(current, _S.SUSPECT, f"{Suspicion.DEADLINE} for {silent_for} s "
                                           f"(deadline {deadline} s)")


def after_lost_events(current: str, reason: str | None, lost: dict[str, int],
                      threshold: int) -> Transition | None:
    """The transition a heartbeat reporting ``lost`` events (per source, since the previous
    heartbeat) causes: more than ``threshold`` in all makes an enrolled or trusted node
    suspect (a heartbeat deadline's suspicion too: an attestation would clear that one)."""
    total = sum(lost.values())
    if total <= threshold:
        return None
    if not (current in (_S.ENROLLED, _S.TRUSTED) or (
            current == _S.SUSPECT and suspicion_of(reason) is Suspicion.DEADLINE)):
        return None
    where = ", ".join(f"{source} {n}" for source, n in sorted(lost.items()) if n)
    return transition(current, _S.SUSPECT, f"{Suspicion.LOST_EVENTS}: {total} since the "
                                           f"previous heartbeat ({where}; threshold "
                                           f"{threshold})")


def after_enrollment(current: str) -> Transition | None:
    """The transition a (re-)enrollment with a good token causes (None: stays enrolled).
    A suspect, quarantined or retired node is refused: an operator must let it enroll
    again first (:data:`OPERATOR_ONLY`), so a node cannot enroll its way out of a verdict."""
    if current == _S.ENROLLED:
        return None
    if current in (_S.SUSPECT, _S.QUARANTINED, _S.RETIRED):
        raise TransitionRefused(f"node is {current}: re-enrolling it needs an operator "
                                "(aegis-controller node reenroll NODE --reason ...)")
    reason = {_S.PROVISIONING: "enrolled with a bootstrap token",
              _S.TRUSTED: "re-enrolled with a new key: trust is re-established by attestation",
              _S.REBUILDING: "enrolled again after a rebuild"}.get(current, "re-enrolled")  # type: ignore[call-overload]
    return transition(current, _S.ENROLLED, reason)


def judge(report: AttestationReport, expected: ExpectedProfile) -> list[str]:
    """Every way ``report`` differs from ``expected`` (empty: it matches)."""
    m = report.measurement
    problems = []
    for path, want in sorted(expected.golden.items()):
        got = m.golden.get(path, "missing from the report")
        if got != want:
            problems.append(f"golden {path}: expected {_short(want)}, got {_short(got)}")
    for unit, want in sorted(expected.units.items()):
        got = m.units.get(unit, "missing from the report")
        if got != want:
            problems.append(f"unit {unit}: expected {_short(want)}, got {_short(got)}")
    reported = bpf_summary(m.bpf)
    for key, want in sorted(expected.bpf.items()):
        got = reported.get(key, "not loaded")
        if got != want:
            problems.append(f"bpf {key}: expected {want}, got {got}")
    for field in ("sysctl_digest", "sshd_digest", "image_id", "agent_version"):
        want = getattr(expected, field)
        if want is not None and getattr(m, field) != want:
            problems.append(f"{field}: expected {_short(want)}, got {_short(getattr(m, field))}")
    return problems


def _short(value: object) -> str:
    text = "none" if value is None else str(value)
    return text[:12] + "…" if len(text) == 64 else text


def after_attestation(current: str, problems: list[str],
                      reason: str | None = None) -> Transition | None:
    """The transition an attestation verdict causes (None: stay); ``reason`` is the one
    stored with ``current`` (a suspect node is cleared only if it is a deadline's)."""
    if problems:
        if current in (_S.ENROLLED, _S.TRUSTED) or (
                current == _S.SUSPECT and suspicion_of(reason) is not Suspicion.MEASUREMENT):
            return transition(current, _S.SUSPECT,
                              f"{Suspicion.MEASUREMENT}: " + "; ".join(problems))
        return None
    if current == _S.SUSPECT and suspicion_of(reason) is not Suspicion.DEADLINE:
        return None  # an operator (node trust) or a rebuild clears it
    if current in (_S.ENROLLED, _S.SUSPECT):
        return transition(current, _S.TRUSTED, "attestation matches the expected profile")
    return None
