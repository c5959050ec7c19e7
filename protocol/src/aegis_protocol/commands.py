"""The agent's verbs as data: one model per verb, checked the same way whether the verb
arrives on the agent's control socket or in a signed order from the controller.

    cmd = parse("grant", {"edge": "10.0.0.1 -> 10.0.0.2 tcp/22", "ttl": 60})
    cmd.verb == "grant" and cmd.ttl == 60.0

``Command`` is the discriminated union (on ``verb``) of every model. The enforcement
verbs (``ENFORCEMENT_VERBS``) act on the node's kernel state; ``rotate``, ``attest`` and
``fetch-secrets`` are run by the agent's controller link and exist only as order kinds
(``revoke-ssh-cert`` too: the agent's sshd revocation list); the queries
and ``confirm`` (``QUERY_VERBS``) exist only on the control socket. :func:`parse`
raises :class:`CommandError` (a ``ValueError``) with one clear line: an unknown or
missing argument, an argument of the wrong type, a value outside its choices.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from .secrets import NAME

__all__ = ["ENFORCEMENT_VERBS", "QUERY_VERBS", "AllowExec", "Attest", "Command", "CommandError",
           "Confirm", "DenyExec", "Events", "FetchSecrets", "Grant", "Quarantine",
           "QuarantineCgroup", "Query",
           "Release", "ReleaseCgroup", "Revoke", "RevokeSshCert", "Rotate", "SegmentPolicy",
           "parse"]

EDGE_HELP = "'SOURCE -> DESTINATION PROTO/PORT'"
Reason = Annotated[str, Field(max_length=200)]


class CommandError(ValueError):
    """The arguments do not fit the verb; the message says which one and why."""


class _Verb(BaseModel):
    # strict: a number is not a string, a bool is not a number (as the wire sends them)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _EdgeVerb(_Verb):
    edge: str

    @field_validator("edge")
    @classmethod
    def _edge_shape(cls, value: str) -> str:
        # the full grammar is the agent's (bpf.edges.Edge.parse); this is the wire's check,
        # worded as the agent words the same mistake
        if len(value) > 200:
            raise ValueError(f"bad edge {value[:40]!r}...: longer than 200 characters")
        if "->" not in value:
            raise ValueError(f"bad edge {value!r}: missing '->' — write an edge as {EDGE_HELP}")
        return value


class Grant(_EdgeVerb):
    """Allow an edge, for ``ttl`` seconds and until ``idle`` seconds without traffic."""

    verb: Literal["grant"] = "grant"
    ttl: float | None = None
    idle: float | None = None


class Revoke(_EdgeVerb):
    """Remove a granted edge."""

    verb: Literal["revoke"] = "revoke"


#: Entries of one ``segment-policy`` order at most (a node's compiled label policies).
MAX_POLICY_ENTRIES = 8192
#: FQDN rules of one ``segment-policy`` order at most (the agent's seg_fqdn_rules holds 1023).
MAX_FQDN_RULES = 1023


class SegmentPolicy(_Verb):
    """Replace the node's label policy entries (compiled by the controller): ``policies``
    as ``NAME=observe|enforce``, ``entries`` as ``POLICY ACTION SRC -> DST PROTO/PORT``
    (ACTION allow, drop or log) or ``POLICY default SRC -> DST``; the full grammar is the
    agent's (``bpf.policy_edges``)."""

    verb: Literal["segment-policy"] = "segment-policy"
    policies: Annotated[list[Annotated[str, Field(max_length=80)]], Field(max_length=1000)]
    entries: Annotated[list[Annotated[str, Field(max_length=200)]],
                       Field(max_length=MAX_POLICY_ENTRIES)]
    #: egress by domain (issue 15 part 5), for the nodes an FQDN policy selects with
    #: ``from``: ``POLICY PATTERN PROTO/PORT|any`` and ``POLICY ADDRESS`` (a DNS server
    #: they may query); grammar in ``aegis_protocol.fqdn``. Empty (older controllers):
    #: egress is not restricted.
    fqdns: Annotated[list[Annotated[str, Field(max_length=400)]],
                     Field(max_length=MAX_FQDN_RULES)] = []
    resolvers: Annotated[list[Annotated[str, Field(max_length=120)]], Field(max_length=64)] = []


class Quarantine(_Verb):
    """Cut the node's traffic except its management peers (``management`` replaces them)."""

    verb: Literal["quarantine"] = "quarantine"
    level: Literal["soft", "hard"] = "soft"
    management: list[str] | None = None
    reason: Reason | None = None


class Release(_Verb):
    """End the node's quarantine."""

    verb: Literal["release"] = "release"
    reason: Reason | None = None


class _PathVerb(_Verb):
    path: Annotated[str, Field(min_length=1, max_length=4096)]


class DenyExec(_PathVerb):
    """Refuse executing a file (by device and inode)."""

    verb: Literal["deny-exec"] = "deny-exec"


class AllowExec(_PathVerb):
    """Take a file off the exec deny set."""

    verb: Literal["allow-exec"] = "allow-exec"


class _CgroupVerb(_Verb):
    cgroup: Annotated[str, Field(min_length=1, max_length=4096, description="a cgroup v2 "
                                 "directory")]


class QuarantineCgroup(_CgroupVerb):
    """Refuse connects from a cgroup except to the management peers."""

    verb: Literal["quarantine-cgroup"] = "quarantine-cgroup"


class ReleaseCgroup(_CgroupVerb):
    """Let a quarantined cgroup connect again."""

    verb: Literal["release-cgroup"] = "release-cgroup"


class Rotate(_Verb):
    """Rotate the node's client certificate (or, later, its leased secrets)."""

    verb: Literal["rotate"] = "rotate"
    what: Literal["certificate", "secrets"]


class FetchSecrets(_Verb):
    """Log in to Vault with a response-wrapped AppRole secret_id and render the node's
    secrets (order only; :mod:`aegis_protocol.secrets` says what the agent checks)."""

    verb: Literal["fetch-secrets"] = "fetch-secrets"
    role: Annotated[str, Field(pattern=NAME, description="the node's AppRole name")]
    # the wrapping token: single use, alive at most secrets.MAX_WRAP_TTL seconds
    # (kept out of repr: a log line or traceback must not show it)
    wrapped_secret_id: Annotated[str, Field(min_length=8, max_length=512, repr=False)]


class RevokeSshCert(_Verb):
    """Add an SSH user certificate to sshd's revocation list (``RevokedKeys``, a KRL) by
    its serial and key id: an access grant that carried it ended before the certificate
    did (order only)."""

    verb: Literal["revoke-ssh-cert"] = "revoke-ssh-cert"
    # decimal: OpenBao's serials are unsigned 64-bit, past the wire's signed integers
    serial: Annotated[str, Field(pattern=r"^[1-9][0-9]{0,19}$",
                                 description="the certificate's serial, decimal")]
    key_id: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[!-~]+$",
                                 description="the certificate's key id")]
    reason: Reason | None = None

    @field_validator("serial")
    @classmethod
    def _u64(cls, value: str) -> str:
        if int(value) >= 2**64:
            raise ValueError(f"serial {value} is over 2^64 - 1")
        return value


class Attest(_Verb):
    """Attest now, not at the next period."""

    verb: Literal["attest"] = "attest"
    reason: Reason | None = None


class Query(_Verb):
    """A question without arguments (control socket only): the agent's status, the granted
    edges, or whether the daemon is serving."""

    verb: Literal["status", "edges", "ping"]


class Confirm(_Verb):
    """Keep the segmentation policy the agent applied at start (``segment.confirm_seconds``
    set): unconfirmed, the agent goes back to the previous one when the time is up."""

    verb: Literal["confirm"] = "confirm"


class Events(_Verb):
    """Spooled events after sequence number ``after`` (default: the last ``limit``)."""

    verb: Literal["events"] = "events"
    limit: Annotated[int, Field(ge=1, le=10000)] = 100
    after: int | None = None


Command = Annotated[Grant | Revoke | SegmentPolicy | Quarantine | Release | DenyExec | AllowExec
                    | QuarantineCgroup | ReleaseCgroup | Rotate | FetchSecrets | RevokeSshCert
                    | Attest | Query | Confirm | Events,
                    Field(discriminator="verb")]
_COMMAND: TypeAdapter[Any] = TypeAdapter(Command)
_MODELS: dict[str, type[_Verb]] = {
    verb: m
    for m in (Grant, Revoke, SegmentPolicy, Quarantine, Release, DenyExec, AllowExec,
              QuarantineCgroup, ReleaseCgroup, Rotate, FetchSecrets, RevokeSshCert, Attest,
              Query, Confirm, Events)
    for verb in get_args(m.model_fields["verb"].annotation)}
ENFORCEMENT_VERBS = ("grant", "revoke", "segment-policy", "quarantine", "release", "deny-exec",
                     "allow-exec", "quarantine-cgroup", "release-cgroup")
QUERY_VERBS = ("status", "edges", "events", "ping", "confirm")


def takes_text(verb: str, name: str) -> bool:
    """Whether ``verb``'s argument ``name`` is a string (so ``12`` stays ``"12"`` when a
    command line gives it, e.g. a certificate serial)."""
    model = _MODELS.get(verb)
    field = model.model_fields.get(name) if model is not None else None
    return field is not None and field.annotation is str


def parse(verb: str, args: dict[str, Any]) -> Any:
    """The model of ``verb`` with ``args``; CommandError says what does not fit."""
    model = _MODELS.get(verb)
    if model is None:
        raise CommandError(f"unknown verb {verb!r}; known: {', '.join(_MODELS)}")
    if "verb" in args:
        raise CommandError(f"{verb} takes no argument(s) verb; allowed: {_allowed(model)}")
    try:
        return _COMMAND.validate_python({**args, "verb": verb})
    except ValidationError as e:
        raise CommandError(_describe(verb, model, e)) from None


def _allowed(model: type[_Verb]) -> str:
    return ", ".join(sorted(set(model.model_fields) - {"verb"})) or "none"


def _describe(verb: str, model: type[_Verb], error: ValidationError) -> str:
    errors = error.errors()
    unknown = sorted(str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        return (f"{verb} takes no argument(s) {', '.join(unknown)}; "
                f"allowed: {_allowed(model)}")
    first = errors[0]
    name = str(first["loc"][1]) if len(first["loc"]) > 1 else "?"
    if first["type"] == "missing":
        return f"{verb} needs the argument {name!r}"
    if first["type"] == "literal_error":
        choices = str(first.get("ctx", {}).get("expected", "")).replace("'", "")
        return f"{verb}: {name} must be one of {choices.replace(' or ', ', ')}"
    if first["type"] == "value_error":
        return f"{verb}: {first['msg'].removeprefix('Value error, ')}"
    if first["type"].endswith("_type") or first["type"] in ("bool_parsing", "int_from_float"):
        return f"{verb}: argument {name!r} has the wrong type"
    return f"{verb}: argument {name!r}: {first['msg']}"
