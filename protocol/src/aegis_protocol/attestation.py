"""Attestation: the node proves its state with a report signed by its identity key over a
fresh, single-use controller nonce; the controller compares it with the node's expected
profile (what the hardening role recorded as golden)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Digest = Annotated[str | None, Field(max_length=64)]  # sha256 hex; None: missing/unreadable
Path = Annotated[str, Field(min_length=1, max_length=4096)]


class Challenge(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    nonce: str
    expires_at: int


class Measurement(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    kernel_release: Annotated[str, Field(max_length=256)]
    boot_id: Annotated[str, Field(max_length=64)]
    image_id: Annotated[str, Field(max_length=128)] = ""
    golden: dict[Path, Digest] = Field(default_factory=dict, max_length=4096)
    units: dict[Annotated[str, Field(max_length=256)], Digest] = Field(
        default_factory=dict, max_length=1024)
    sysctl_digest: Digest = None
    sshd_digest: Digest = None
    bpf: list[dict[str, str | int]] = Field(default_factory=list, max_length=256)
    agent_version: Annotated[str, Field(max_length=64)]


class AttestationReport(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    node_id: Annotated[str, Field(min_length=1, max_length=63)]
    nonce: Annotated[str, Field(min_length=16, max_length=128)]
    measured_at: int
    measurement: Measurement


class SignedReport(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    report: AttestationReport
    signature: Annotated[str, Field(min_length=1, max_length=256)]


class ExpectedProfile(BaseModel):
    """What a node must measure to be trusted; only what is set is checked."""

    model_config = ConfigDict(extra="forbid")

    golden: dict[Path, Digest] = Field(default_factory=dict, max_length=4096)
    units: dict[Annotated[str, Field(max_length=256)], Digest] = Field(
        default_factory=dict, max_length=1024)
    sysctl_digest: Digest = None
    sshd_digest: Digest = None
    image_id: Annotated[str, Field(max_length=128)] | None = None
    agent_version: Annotated[str, Field(max_length=64)] | None = None
    bpf: dict[Annotated[str, Field(max_length=256)], Annotated[str, Field(max_length=256)]] = \
        Field(default_factory=dict, max_length=256,
              description="bpf_summary() entries the node must report: each pinned "
                          "program's tag, each enforcement component's attach mode")


def bpf_summary(bpf: list[dict[str, str | int]]) -> dict[str, str]:
    """The comparable part of a measurement's ``bpf`` list: ``prog:<pin>`` -> program tag
    (the hash of the loaded instructions: a swapped program has another one) and
    ``mode:<component>`` -> how it is attached. Links and map ids change on every load and
    are left out."""
    out: dict[str, str] = {}
    for item in bpf:
        if item.get("kind") == "prog" and "pin" in item:
            out[f"prog:{item['pin']}"] = str(item.get("tag", ""))
        elif "component" in item:
            out[f"mode:{item['component']}"] = str(item.get("mode", ""))
    return out


GOLDEN_SCHEMA = "aegis.golden/v1"


def profile_from_golden(record: dict) -> ExpectedProfile:
    """The expected profile a golden record (written by the aegis.fleet.harden role at
    converge time, ``/var/lib/aegis/golden.json``) stands for: the hash of every file it
    lists. Its ``sysctl`` mapping (name -> value at converge, null where the node lacks the
    setting) names what the agent digests into ``sysctl_digest``; it is checked here but
    expects nothing by itself. Raises ValueError when ``record`` is not a golden record."""
    if not isinstance(record, dict) or record.get("schema") != GOLDEN_SCHEMA:
        raise ValueError(f"not a golden record (no \"schema\": \"{GOLDEN_SCHEMA}\")")
    files = record.get("files")
    if not isinstance(files, dict):
        raise ValueError("golden record has no \"files\" mapping")
    sysctl = record.get("sysctl", {})
    if not isinstance(sysctl, dict) or not all(
            isinstance(k, str) and k and (v is None or isinstance(v, str))
            for k, v in sysctl.items()):
        raise ValueError("golden record \"sysctl\" must map sysctl names to their values as "
                         "strings (null where the node lacks one), "
                         "e.g. {\"kernel.kptr_restrict\": \"2\"}")
    return ExpectedProfile(golden=files)


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node_id: str
    ok: bool
    state: str
    reason: str
    mismatches: list[str] = Field(default_factory=list)


def profile_from_document(document: object) -> ExpectedProfile:
    """The expected profile a JSON document stands for: a golden record (``"schema":
    "aegis.golden/v1"``) through :func:`profile_from_golden`, anything else read as an
    :class:`ExpectedProfile`. Raises ValueError (pydantic's ValidationError is one)."""
    if isinstance(document, dict) and document.get("schema") == GOLDEN_SCHEMA:
        return profile_from_golden(document)
    return ExpectedProfile.model_validate(document)


def reported_bpf(node_id: str, measurement: str | None) -> dict[str, str]:
    """The :func:`bpf_summary` of a node's last attestation (``measurement``: its JSON, as
    the controller keeps it), to pin in the node's expected profile. Raises ValueError when
    there is nothing to pin."""
    if not measurement:
        raise ValueError(f"node {node_id!r} has not attested yet: no BPF programs to pin "
                         "(wait for its first attestation, or leave out --pin-bpf)")
    pinned = bpf_summary(Measurement.model_validate_json(measurement).bpf)
    if not pinned:
        raise ValueError(f"node {node_id!r} reported no Aegis BPF programs: is its agent "
                         "enforcing? (aegis-agent status on the node)")
    return pinned
