"""Trust states of a node and how attestation verdicts move it between them.

    provisioning -> enrolled -> trusted <-> suspect -> quarantined -> rebuilding -> retired

Every transition carries a reason; a transition that is not in the table is refused, so
a bug or a forged request can never, say, take a quarantined node straight to trusted
(release is an explicit operator action).
"""

from __future__ import annotations

from dataclasses import dataclass

from aegis_protocol.attestation import AttestationReport, ExpectedProfile, bpf_summary

STATES = ("provisioning", "enrolled", "trusted", "suspect", "quarantined", "rebuilding",
          "retired")
ALLOWED: dict[str, set[str]] = {
    "provisioning": {"enrolled", "retired"},
    "enrolled": {"trusted", "suspect", "quarantined", "retired"},
    "trusted": {"suspect", "quarantined", "rebuilding", "retired"},
    "suspect": {"trusted", "quarantined", "rebuilding", "retired"},
    "quarantined": {"trusted", "rebuilding", "retired"},  # -> trusted: operator release only
    "rebuilding": {"retired"},
    "retired": set(),
}


class TransitionRefused(ValueError):
    pass


@dataclass(frozen=True)
class Transition:
    before: str
    after: str
    reason: str


def transition(current: str, target: str, reason: str, *, operator: bool = False) -> Transition:
    if target not in ALLOWED.get(current, set()):
        raise TransitionRefused(f"a node cannot go from {current} to {target}")
    if current == "quarantined" and target == "trusted" and not operator:
        raise TransitionRefused("only an operator can release a quarantined node")
    return Transition(current, target, reason)


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


def after_attestation(current: str, problems: list[str]) -> Transition | None:
    """The transition an attestation verdict causes (None: stay)."""
    if problems:
        if current in ("enrolled", "trusted"):
            return transition(current, "suspect", "attestation mismatch: " + "; ".join(problems))
        return None
    if current in ("enrolled", "suspect"):
        return transition(current, "trusted", "attestation matches the expected profile")
    return None
