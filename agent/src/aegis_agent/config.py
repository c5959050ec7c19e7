"""The agent's configuration file (YAML), validated with errors that name the key.

    cfg = load_config("/etc/aegis/agent.yaml")     # raises ConfigError listing every problem
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from aegis_protocol.events import EventKind, Scalar
from aegis_protocol.routes import ORDERS_WAIT_MAX
from aegis_protocol.secrets import MOUNT, NAME
from aegis_protocol.urls import checked_url

from .bpf.bpffs import PIN_ROOT
from .bpf.edges import Edge, EdgeSpecError, Peer

DEFAULT_PATH = Path("/etc/aegis/agent.yaml")


class ConfigError(ValueError):
    """The config file is missing, not YAML, or not valid; ``problems`` lists each one."""

    def __init__(self, path: str | os.PathLike, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: invalid agent configuration:\n  " + "\n  ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EdgeGrant(_Strict):
    edge: str
    ttl: Annotated[float, Field(gt=0)] | None = None
    idle: Annotated[float, Field(gt=0)] | None = None

    @field_validator("edge")
    @classmethod
    def _parse(cls, value: str) -> str:
        try:
            Edge.parse(value)
        except EdgeSpecError as e:
            raise ValueError(str(e)) from None
        return value


def _peer(spec: str) -> str:
    # checked at load, not first at attach: a bad peer is a config error naming the key
    try:
        Peer.parse(spec)
    except EdgeSpecError as e:
        raise ValueError(str(e)) from None
    return spec


ManagementPeer = Annotated[str, AfterValidator(_peer)]


class SegmentConfig(_Strict):
    interface: str | None = Field(None, description="no interface: no segmentation")
    pin_dir: Path = PIN_ROOT / "segment"
    xdp_mode: Literal["native", "generic", "auto"] = "auto"
    tc_mode: Literal["tcx", "clsact", "auto"] = "auto"
    mode: Literal["enforce", "observe"] = "enforce"
    arp: Literal["allow", "deny"] = "allow"
    ipv6: Literal["deny", "allow", "filter"] = "deny"
    management: list[ManagementPeer] = Field(default_factory=list)
    edges: list[EdgeGrant] = Field(default_factory=list, description="'SPEC' or {edge, ttl, idle}")
    sweep_interval: Annotated[float, Field(gt=0)] = 5.0
    fqdn_ttl_floor: Annotated[float, Field(ge=1, le=86400)] = Field(
        60.0, description="egress by domain: an address learned from a DNS answer stays "
        "allowed for max(the record's TTL, this many seconds)")
    policy_report_interval: Annotated[float, Field(gt=0)] = Field(
        60.0, description="seconds between reports of the label policies' counters (one "
        "`label_policy_counters` event per policy whose counters moved)")
    confirm_seconds: Annotated[float, Field(gt=0, le=3600)] | None = Field(
        None, description="timed confirmation: a policy applied at start that differs from "
        "the one before is reverted (or the filter detached) unless `aegis-agent confirm` "
        "comes within this many seconds; unset: no confirmation")

    @field_validator("edges", mode="before")
    @classmethod
    def _short_form(cls, value: object) -> object:
        if isinstance(value, list):
            return [{"edge": v} if isinstance(v, str) else v for v in value]
        return value



class MonitorConfig(_Strict):
    exec: bool = True
    connect: bool = True
    exec_deny: list[str] = Field(default_factory=list)
    pin_dir: Path = PIN_ROOT
    lsm: bool = True
    scope: Literal["auto", "host", "namespace"] = Field(
        "auto", description="host: every process on the kernel; namespace: only the agent's "
        "PID namespace; auto: namespace when the agent runs in a container node")


class SpoolConfig(_Strict):
    dir: Path = Path("/var/lib/aegis/spool")
    max_bytes: Annotated[int, Field(ge=64 * 1024)] = 64 * 1024 * 1024
    segment_bytes: Annotated[int, Field(ge=4096)] = 4 * 1024 * 1024
    high_water: Annotated[float, Field(gt=0, le=1)] = 0.8


class ControlConfig(_Strict):
    socket: Path = Path("/run/aegis/agent.sock")


class Threshold(_Strict):
    count: Annotated[int, Field(ge=1)]
    seconds: Annotated[float, Field(gt=0)]
    by: str | None = Field(None, description="data field that keys the count, e.g. src")


class Rule(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    kind: EventKind | list[EventKind]
    match: dict[str, list[Scalar]] = Field(default_factory=dict)
    match_prefix: dict[str, list[str]] = Field(
        default_factory=dict, description="field -> prefixes: the field's string value must "
        "start with one of them, e.g. {filename: [/tmp/, /var/tmp/, /dev/shm/]}")
    action: Literal["log", "alert", "deny", "quarantine"]
    threshold: Threshold | None = None

    @field_validator("match_prefix")
    @classmethod
    def _prefixes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, prefixes in value.items():
            if not name:
                raise ValueError("a field name is empty: name the event data field, e.g. "
                                 "filename")
            if not prefixes:
                raise ValueError(f"{name}: no prefixes given, so the rule could never "
                                 "match; list at least one, e.g. [/tmp/]")
            if any(p == "" for p in prefixes):
                raise ValueError(f"{name}: an empty prefix matches every value; give the "
                                 "start the value must have, e.g. /tmp/")
        return value

    def kinds(self) -> list[str]:
        return [self.kind] if isinstance(self.kind, str) else list(self.kind)


class WatchdogConfig(_Strict):
    interval: Annotated[float, Field(gt=0)] = 5.0
    max_rss_mb: Annotated[float, Field(gt=0)] = 256.0
    max_cpu_percent: Annotated[float, Field(gt=0)] = 50.0
    grace: Annotated[int, Field(ge=1, description="intervals over a limit before exiting")] = 6


def _vault_url(url: str) -> str:
    return checked_url(url, "the vault url")


def _controller_url(url: str) -> str:
    return checked_url(url, "the controller url")


class VaultConfig(_Strict):
    """The Vault-compatible server (OpenBao, Vault) that response-wrapped the bootstrap
    token: with it set, ``token_file`` holds a wrapping token the agent unwraps there."""

    url: Annotated[str, Field(description="the server's address: https://, or http:// on "
                              "loopback only"), AfterValidator(_vault_url)]
    ca_file: Path | None = Field(None, description="CA bundle for an https url")


class ControllerConfig(_Strict):
    url: Annotated[str, Field(pattern=r"^https://", description="the controller's API"),
                   AfterValidator(_controller_url)]
    ca_file: Path = Field(description="the controller CA that signed its server certificate")
    token_file: Path = Path("/run/aegis/bootstrap-token")
    vault: VaultConfig | None = Field(None, description="unwrap the bootstrap token here")
    state_dir: Path = Path("/var/lib/aegis/agent")
    golden_file: Path = Path("/var/lib/aegis/golden.json")
    interval: Annotated[float, Field(gt=0)] = 10.0
    attest_interval: Annotated[float, Field(gt=0, description="seconds between attestations "
                                            "(also on start and on an attest order)")] = 300.0
    renew_before: Annotated[float, Field(gt=0, description="rotate the client certificate "
                                         "this many seconds before it expires")] = 8 * 3600.0
    max_backoff: Annotated[float, Field(ge=1, description="longest wait in seconds between "
                                        "attempts while the controller cannot be reached "
                                        "(the wait doubles from 1 s up to this)")] = 60.0
    orders_wait: Annotated[float, Field(ge=0, le=ORDERS_WAIT_MAX, description=(
        "seconds the controller holds the agent's long poll for orders: an order made for "
        "the node (a grant, a quarantine) runs as soon as it is made instead of at the next "
        "round; 0: orders only at each round"))] = 20.0


# -- leased secrets (the secret sink) ------------------------------------------------------
SECRETS_DIR = Path("/run/aegis/secrets")
FILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
KV_PATH = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"
#: placeholders a template may use, by source; the default template of each source
PLACEHOLDERS = {"kv": ("value",), "database": ("username", "password")}
DEFAULT_TEMPLATES = {"kv": "{value}", "database": "username={username}\npassword={password}\n"}
MODES = {0o400: "0400", 0o440: "0440"}


class KvSource(_Strict):
    """A field of a KV version 2 secret."""

    mount: Annotated[str, Field(pattern=MOUNT, description="the KV v2 mount, e.g. aegis-kv")]
    path: Annotated[str, Field(pattern=KV_PATH, max_length=512,
                               description="the secret's path in the mount, e.g. web/app")]
    field: Annotated[str, Field(min_length=1, max_length=128)]

    @field_validator("path")
    @classmethod
    def _no_dots(cls, value: str) -> str:
        if any(part in (".", "..") for part in value.split("/")):
            raise ValueError(f"bad path {value!r}: '.' and '..' are not path parts here")
        return value


class DatabaseSource(_Strict):
    """A dynamic database credential: ``<mount>/creds/<role>`` (one per lease, shared by
    every file that names the same mount and role)."""

    mount: Annotated[str, Field(pattern=MOUNT, description="the database mount, e.g. aegis-db")]
    role: Annotated[str, Field(pattern=NAME, description="the database role")]


def _file_mode(value: object) -> int:
    # YAML 1.1 reads 0400 as the octal int 256; a quoted "0400" is a string
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip(), 8)
    if isinstance(value, bool) or value not in MODES:
        shown = f"{value:04o}" if isinstance(value, int) and not isinstance(value, bool) \
            else repr(value)
        raise ValueError(f"mode {shown} is not allowed: use 0400 (owner reads) or 0440 "
                         "(owner and group read); a secret file is never writable or "
                         "readable by others")
    return value  # type: ignore[return-value]


class SecretFile(_Strict):
    """One file the sink renders in ``secrets.dir``."""

    name: Annotated[str, Field(pattern=FILE_NAME, description="a plain file name (no /)")]
    kv: KvSource | None = None
    database: DatabaseSource | None = None
    template: Annotated[str, Field(max_length=4096)] | None = Field(
        None, description="str.format text: {value} for kv, {username} and {password} for "
        "database ({{ and }} for literal braces); default: the value alone, or "
        "'username=...\\npassword=...\\n'")
    owner: str | int = "root"
    group: str | int = "root"
    mode: Annotated[int, Field(description="0400 or 0440")] = 0o400
    reload: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = \
        Field(None, description="argv run after the file changed, e.g. "
              "[systemctl, reload, app.service]")

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: object) -> int:
        return _file_mode(value)

    @model_validator(mode="after")
    def _one_source(self) -> SecretFile:
        if (self.kv is None) == (self.database is None):
            raise ValueError(f"file {self.name!r} needs exactly one source: kv: {{mount, path, "
                             "field}} or database: {mount, role}")
        allowed = PLACEHOLDERS[self.source]
        try:
            fields = [name for _t, name, _s, _c in string.Formatter().parse(self.template or "")]
        except ValueError as e:
            raise ValueError(f"file {self.name!r}: template is not valid: {e} (write {{{{ and "
                             "}} for literal braces)") from None
        for name in fields:
            if name is not None and name not in allowed:
                raise ValueError(f"file {self.name!r}: template placeholder {{{name}}} is not "
                                 f"known for a {self.source} source; use "
                                 + ", ".join(f"{{{a}}}" for a in allowed)
                                 + " (write {{ and }} for literal braces)")
        if self.template is not None:
            try:
                self.template.format(**{a: "" for a in allowed})
            except (ValueError, IndexError) as e:
                raise ValueError(f"file {self.name!r}: template is not valid: {e}") from None
        return self

    @property
    def source(self) -> str:
        return "kv" if self.kv is not None else "database"

    def render(self, values: dict[str, str]) -> bytes:
        return (self.template or DEFAULT_TEMPLATES[self.source]).format(**values).encode()


class SecretsConfig(_Strict):
    """The secret sink: log in to Vault with the secret_id a fetch-secrets order brings,
    render ``files`` on tmpfs, renew the token and leases, wipe on quarantine."""

    url: Annotated[str, Field(description="the Vault-compatible server: https://, or http:// "
                              "on loopback only"), AfterValidator(_vault_url)]
    ca_file: Path | None = Field(None, description="CA bundle for an https url")
    approle_mount: Annotated[str, Field(pattern=MOUNT)] = "aegis-approle"
    role: Annotated[str, Field(pattern=NAME, description="this node's AppRole name; an order "
                               "naming another one is refused")]
    role_id: Annotated[str, Field(min_length=1, max_length=256, repr=False)]
    dir: Path = Field(SECRETS_DIR, description="a tmpfs (or ramfs) mount; the sink writes "
                      "nowhere else")
    fraction: Annotated[float, Field(ge=0.1, le=0.9, description="renew at this fraction "
                                     "of a TTL")] = 2 / 3
    jitter: Annotated[float, Field(ge=0, le=0.5, description="± this fraction of the "
                                   "renewal time, at random")] = 0.1
    revoke_delay: Annotated[float, Field(ge=0, le=300, description="seconds between the "
                                         "reload after a refresh and revoking the previous "
                                         "token (consumers switch over meanwhile)")] = 5.0
    files: Annotated[list[SecretFile], Field(min_length=1, max_length=64)]

    @model_validator(mode="after")
    def _unique_names(self) -> SecretsConfig:
        names = [f.name for f in self.files]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"files: name(s) {', '.join(twice)} given more than once")
        return self


class SshKrlConfig(_Strict):
    """sshd's ``RevokedKeys`` list of user certificates, kept from ``revoke-ssh-cert``
    orders (the aegis.fleet.harden role points sshd at the same files)."""

    # the agent's unit makes /var/lib/aegis/ssh (StateDirectory): /etc is read-only to it
    file: Path = Field(Path("/var/lib/aegis/ssh/revoked_keys.krl"),
                       description="the KRL sshd's RevokedKeys names")
    ca_public_key: Path = Field(Path("/etc/ssh/aegis_user_ca.pub"),
                                description="the user CA sshd trusts (TrustedUserCAKeys)")
    spec_file: Path = Field(Path("/var/lib/aegis/ssh/revoked_keys.spec"),
                            description="the revoked certificates, the KRL's source")
    session_log: Literal["journal"] | Path | None = Field(
        None, description="where sshd's 'sshd[PID]: Accepted publickey ... ID <key id> "
        "(serial N)' lines are read, to tie the exec monitor's commands to the SSH grant "
        "whose certificate opened the session: 'journal' (systemd's journal, through "
        "journalctl: nodes without a syslog daemon) or the absolute path of sshd's log in "
        "syslog's file format (rsyslog's /var/log/auth.log); None: commands are not "
        "attached to grants")
    session_wait: Annotated[float, Field(ge=0, le=2)] = Field(
        0.2, description="the longest (seconds) a batch of exec events waits for the log "
        "to name a session's sshd pid (sshd runs the session at once; the log line comes "
        "through syslog or journald)")

    @field_validator("session_log", mode="before")
    @classmethod
    def _session_log(cls, value: object) -> object:
        if value is None or value == "journal":
            return value
        if isinstance(value, str | Path) and Path(value).is_absolute():
            return Path(value)
        raise ValueError(f"session_log: {value!r} is neither 'journal' (read sshd's lines "
                         "from systemd's journal) nor an absolute path to sshd's log in "
                         "syslog's file format (e.g. /var/log/auth.log)")


class MetricsConfig(_Strict):
    textfile: Path | None = Field(
        None, description="write Prometheus metrics to this file for node_exporter's "
        "textfile collector (its name must end in .prom; written to a temporary file "
        "beside it and renamed over it), e.g. /var/lib/prometheus/node-exporter/"
        "aegis_agent.prom; unset: no metrics")
    interval: Annotated[float, Field(gt=0)] = 15.0

    @field_validator("textfile")
    @classmethod
    def _prom(cls, value: Path | None) -> Path | None:
        if value is not None and value.suffix != ".prom":
            raise ValueError(f"{value}: node_exporter's textfile collector reads only files "
                             "whose name ends in .prom")
        return value


class AgentConfig(_Strict):
    node_id: str | None = None
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    monitors: MonitorConfig = Field(default_factory=MonitorConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    policy: list[Rule] = Field(default_factory=list)
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    controller: ControllerConfig | None = None
    secrets: SecretsConfig | None = Field(None, description="leased secrets on tmpfs "
                                          "(needs controller: fetch-secrets orders)")
    ssh_krl: SshKrlConfig | None = Field(None, description="sshd's revoked user "
                                         "certificates (needs controller: revoke-ssh-cert "
                                         "orders)")

    @model_validator(mode="after")
    def _node_id_for_controller(self) -> AgentConfig:
        if self.controller is not None and not self.node_id:
            raise ValueError("node_id is required when controller is set (it is the CN of the "
                             "node's certificate)")
        if self.secrets is not None and self.controller is None:
            raise ValueError("secrets needs controller: the secret_id comes in the "
                             "controller's fetch-secrets order")
        if self.ssh_krl is not None and self.controller is None:
            raise ValueError("ssh_krl needs controller: revocations come in the "
                             "controller's revoke-ssh-cert orders")
        return self


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "int", "EdgeGrant") or "[" in str(part):
            continue  # pydantic's union branch names
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def problems(error: ValidationError) -> list[str]:
    """pydantic's errors as 'key.path: what is wrong' lines, one per problem."""
    lines = []
    for err in error.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the agent's config reference)"
        lines.append(f"{_where(err['loc'])}: {msg}")
    return list(dict.fromkeys(lines))


def parse_config(text: str, path: str | os.PathLike = "<config>") -> AgentConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(path, [f"not valid YAML: {e}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, ["the file must be a YAML mapping (key: value), "
                                 f"found a {type(data).__name__}"])
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(path, problems(e)) from None


def load_config(path: str | os.PathLike = DEFAULT_PATH) -> AgentConfig:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(path, [f"cannot read it: {e.strerror}"]) from None
    return parse_config(text, path)
