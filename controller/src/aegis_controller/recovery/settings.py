"""The recovery settings file: where the Terraform root module and the playbooks are, how
the steps run, and the guard rails.

:meth:`RecoverySettings.load` reads one YAML file, e.g.::

    guard_rails: {max_in_flight: 1}
    terraform:
      root: ../terraform/fleets/local       # the root module that owns the nodes
      data_dir: tf-data                     # TF_DATA_DIR
      state: fleet.tfstate                  # local state (optional: the module's backend)
      var_file: fleet.tfvars.json           # optional -var-file (JSON object)
      replace_address: module.node["{node}"].terraform_data.node
      timeout_s: 1800
      lock_timeout_s: 60
      env: {}                               # e.g. cloud credentials' variable names
      cli_config: ../terraform/cli.tfrc     # optional TF_CLI_CONFIG_FILE (else none)
      binary: terraform
    ansible:
      inventory: inventory.yml
      playbooks: /path/to/ansible_collections/aegis/fleet/playbooks
      env: {ANSIBLE_CONFIG: ../ansible.cfg}
      agent_vars_file: agent-vars.yml       # controller URL, CA ... (never a token)
      verify_vars_file: harden-vars.yml     # harden.yml's variables for verify (a baked
                                            # fleet: the bake's, so check mode is exact)
      quarantine_mode: soft                 # or hard
      timeout_s: 1800
      golden_path: /var/lib/aegis/golden.json   # where the harden role writes it
      verify_tags: null                     # harden.yml --tags for verify (default: all)
    forensics:
      recipient: age1...                    # incident response's age public key
      dest: forensics                       # bundles land here on the controller
      # skip: true                          # replace without a bundle (then no recipient)
    baked: false                            # true: verify in check mode, any change fails
    enroll_timeout_s: 600                   # bounds the agent (enroll) playbook's run
    lease_s: 60                             # a job's lease: a dead replica's job is
                                            # resumed (by a restart or another replica)
                                            # once it expires
    poll_s: 5                               # seconds between the engine's ticks

``ansible.playbooks`` defaults to the collection's ``playbooks`` directory when the
controller runs from an Aegis checkout. The Terraform root module must declare the node
resource at ``replace_address`` (default ``module.node["{node}"].terraform_data.node``,
the local fleet's); for a cloud, point ``root`` at its root module, set the address of
its instance resource (e.g. ``module.node["{node}"].aws_instance.this``), its backend
(leave ``state`` unset for a remote backend) and the credentials' ``env``.

The steps' **backend** is a setting, ``backend`` (default ``runner``):

- ``runner``: the steps above, on this controller (ansible-runner and Terraform):
  ``terraform``, ``ansible`` and ``forensics`` are required;
- ``awx``: each step is an AWX / Automation Controller job template
  (:mod:`.awx_steps`); only the ``awx`` section is needed::

    backend: awx
    awx:
      url: https://awx.example.com
      token_file: /etc/aegis/awx.token       # or token_env: AEGIS_AWX_TOKEN (one of them)
      templates:                             # a job template's name or id per step
        contain: aegis-quarantine
        collect: aegis-forensics
        replace: aegis-rebuild
        verify: aegis-verify
        enroll: aegis-enroll
      ca_file: /etc/aegis/awx-ca.pem         # or verify_tls: false (not for production)
      timeout_s: 3600                        # bounds each AWX job (enroll: enroll_timeout_s)
      poll_s: 2                              # seconds between polls of a running job

- ``python``: steps of your own, e.g. another orchestrator's client::

    backend: python
    python:
      factory: mypackage.steps:make_steps    # FACTORY(settings) -> Steps
      options: {}                            # anything; the factory reads settings.python

The sections of another backend than the chosen one are refused (they would be ignored).

Relative paths resolve against the settings file's directory. Every bad value is reported
at once, each naming its key and how to fix it; unknown keys are refused (a typo must not
silently fall back to a default).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .guard import GuardRails, GuardRailsInvalid

#: The playbooks a recovery runs, in order (the dry run lists them the same way).
PLAYBOOKS = ("quarantine.yml", "forensics.yml", "harden.yml", "agent.yml")
DEFAULT_REPLACE_ADDRESS = 'module.node["{node}"].terraform_data.node'
DEFAULT_GOLDEN_PATH = "/var/lib/aegis/golden.json"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Extra vars that would put a bootstrap token into a file: the enroll step passes only
#: ``agent_bootstrap_token_command``.
_TOKEN_VARS = ("agent_bootstrap_token", "agent_bootstrap_tokens")
#: The steps' backends (``backend``) and the sections each one needs.
BACKENDS = {"runner": ("terraform", "ansible", "forensics"), "awx": ("awx",),
            "python": ("python",)}
#: The steps an AWX backend launches a job template for, in the order a job runs them.
STEP_NAMES = ("contain", "collect", "replace", "verify", "enroll")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class RecoverySettingsInvalid(ValueError):
    """The settings file is missing, unreadable or has bad values (each one named)."""


def default_playbooks_dir() -> Path | None:
    """The collection's ``playbooks`` directory when the controller runs from an Aegis
    checkout (``galaxy.yml`` next to ``playbooks/``), else None."""
    repo = Path(__file__).resolve().parents[4]
    if (repo / "galaxy.yml").is_file() and (repo / "playbooks").is_dir():
        return repo / "playbooks"
    return None


@dataclass(frozen=True)
class TerraformSettings:
    root: Path
    data_dir: Path
    state: Path | None = None
    var_file: Path | None = None
    replace_address: str = DEFAULT_REPLACE_ADDRESS
    timeout_s: float = 1800.0
    lock_timeout_s: float = 60.0
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # may hold credentials
    cli_config: Path | None = None
    binary: str = "terraform"

    def address(self, node_id: str) -> str:
        """The node's resource address (the template with ``{node}`` filled in)."""
        return self.replace_address.replace("{node}", node_id)

    def variables(self) -> dict[str, Any] | None:
        """The ``var_file``'s variables (read at each use, so edits apply to the next step)."""
        if self.var_file is None:
            return None
        return _json_object(self.var_file, "terraform.var_file")


@dataclass(frozen=True)
class AnsibleSettings:
    inventory: Path
    playbooks: Path
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    agent_vars_file: Path | None = None
    verify_vars_file: Path | None = None
    quarantine_mode: str = "soft"
    timeout_s: float = 1800.0
    golden_path: str = DEFAULT_GOLDEN_PATH
    verify_tags: str | None = None

    def playbook(self, name: str) -> Path:
        return self.playbooks / name

    def agent_vars(self) -> dict[str, Any]:
        """The agent play's extra vars from ``agent_vars_file`` (read at each use)."""
        if self.agent_vars_file is None:
            return {}
        return _agent_vars(self.agent_vars_file)

    def verify_vars(self) -> dict[str, Any]:
        """harden.yml's extra vars for the verify step, from ``verify_vars_file``."""
        if self.verify_vars_file is None:
            return {}
        return _load_mapping(self.verify_vars_file, "ansible.verify_vars_file", "YAML or JSON")


@dataclass(frozen=True)
class ForensicsSettings:
    recipient: str | None
    dest: Path | None
    skip: bool = False


@dataclass(frozen=True)
class AwxSettings:
    """The AWX backend: where AWX is, where its token is read from (never the token
    itself: it is read when a step runs and kept in the HTTP client's headers only), and
    the job template of each step."""

    url: str
    templates: Mapping[str, int | str]
    token_file: Path | None = None
    token_env: str | None = None
    verify_tls: bool = True
    ca_file: Path | None = None
    timeout_s: float = 3600.0
    poll_s: float = 2.0

    def token(self) -> str:
        """The token, read now (a rotated token file applies to the next step)."""
        if self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()
            except OSError as exc:
                raise RecoverySettingsInvalid(
                    f"awx.token_file {self.token_file} cannot be read: {exc.strerror}") from None
            where = f"awx.token_file {self.token_file} is empty"
        else:
            token = os.environ.get(self.token_env or "", "").strip()
            where = f"awx.token_env: ${self.token_env} is not set or empty"
        if not token:
            raise RecoverySettingsInvalid(f"{where}: put an AWX token there (AWX: Users -> "
                                          "Tokens)")
        return token


@dataclass(frozen=True)
class PythonSettings:
    """The python backend: ``factory`` (``module:callable``) makes the steps from the
    settings; ``options`` are the factory's own."""

    factory: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecoverySettings:
    path: Path
    guard_rails: GuardRails
    terraform: TerraformSettings | None = None
    ansible: AnsibleSettings | None = None
    forensics: ForensicsSettings | None = None
    baked: bool = False
    enroll_timeout_s: float = 600.0
    #: A job's lease: how long a killed replica's job waits before it is resumed.
    lease_s: float = 60.0
    #: Seconds between the engine's ticks.
    poll_s: float = 5.0
    #: Which steps run the jobs: ``runner``, ``awx`` or ``python`` (see the module doc).
    backend: str = "runner"
    awx: AwxSettings | None = None
    python: PythonSettings | None = None

    @classmethod
    def load(cls, path: str | Path) -> RecoverySettings:
        """Read and check the settings file; raise :class:`RecoverySettingsInvalid` naming
        every bad key and its fix."""
        path = Path(path).expanduser().absolute()
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise RecoverySettingsInvalid(
                f"recovery settings file {path} does not exist: create it (see "
                "aegis_controller.recovery.settings for an example) or pass its path") from None
        except OSError as exc:
            raise RecoverySettingsInvalid(
                f"cannot read recovery settings {path}: {exc.strerror}") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise RecoverySettingsInvalid(
                f"recovery settings {path} is not valid YAML{where}: fix the syntax") from None
        reader = _Reader(path.parent)
        settings = reader.settings(path, raw)
        if reader.problems:
            raise RecoverySettingsInvalid(
                f"recovery settings {path}: " + "; ".join(reader.problems))
        assert settings is not None
        return settings


class _Reader:
    """Collects every problem of one settings file while it builds the settings."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.problems: list[str] = []

    def bad(self, key: str, message: str) -> None:
        self.problems.append(f"{key} {message}")

    # -- sections -------------------------------------------------------------------------
    def settings(self, path: Path, raw: object) -> RecoverySettings | None:
        top = self.section("", raw, {"guard_rails", "terraform", "ansible", "forensics",
                                     "baked", "enroll_timeout_s", "lease_s", "poll_s",
                                     "backend", "awx", "python"})
        backend = top.get("backend", "runner")
        if backend not in BACKENDS:
            self.bad("backend", f"must be one of {', '.join(BACKENDS)} (runner: ansible-runner "
                     "and Terraform on this controller; awx: AWX job templates; python: "
                     f"your own steps), got {backend!r}")
            return None
        for other, sections in BACKENDS.items():
            for name in sections:
                if other != backend and name in top and name not in BACKENDS[backend]:
                    self.bad(f"{name}:", f"is only used by backend {other}, but backend is "
                             f"{backend}: remove the section or set backend: {other}")
        rails = self.guard_rails(top.get("guard_rails"))
        terraform = ansible = forensics = awx = python = None
        if backend == "runner":
            terraform = self.terraform(top.get("terraform"))
            ansible = self.ansible(top.get("ansible"))
            forensics = self.forensics(top.get("forensics"))
        elif backend == "awx":
            awx = self.awx(top.get("awx"))
        else:
            python = self.python(top.get("python"))
        baked = self.boolean("baked", top.get("baked", False))
        enroll = self.seconds("enroll_timeout_s", top.get("enroll_timeout_s", 600))
        lease = self.seconds("lease_s", top.get("lease_s", 60))
        poll = self.seconds("poll_s", top.get("poll_s", 5))
        needed = {"runner": (terraform, ansible, forensics), "awx": (awx,),
                  "python": (python,)}[backend]
        if self.problems or rails is None or None in needed:
            return None
        return RecoverySettings(path=path, guard_rails=rails, terraform=terraform,
                                ansible=ansible, forensics=forensics, baked=baked,
                                enroll_timeout_s=enroll, lease_s=lease, poll_s=poll,
                                backend=backend, awx=awx, python=python)

    def awx(self, raw: object) -> AwxSettings | None:
        s = self.section("awx", raw, {"url", "token_file", "token_env", "templates",
                                      "verify_tls", "ca_file", "timeout_s", "poll_s"},
                         required=("url", "templates"))
        if not s:
            return None
        url = s.get("url")
        if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s/?#]+[^\s?#]*", url):
            self.bad("awx.url", "must be AWX's base URL, https://awx.example.com (http:// "
                     f"only for a local test), got {url!r}")
            url = None
        token_file, token_env = s.get("token_file"), s.get("token_env")
        path = None
        if (token_file is None) == (token_env is None):
            self.bad("awx.token_file, awx.token_env", "set exactly one: the file that holds "
                     "the AWX token, or the name of the environment variable that does "
                     "(the token itself never goes in this file)")
        elif token_file is not None:
            path = self.path("awx.token_file", token_file, kind="file",
                             fix="the file that holds the AWX token (one line, mode 0600)")
            if path is not None and path.is_file() and path.stat().st_mode & 0o077:
                self.bad("awx.token_file", f"{path} is readable by others than its owner: "
                         f"chmod 600 {path}")
        elif not isinstance(token_env, str) or not _ENV_NAME.match(token_env):
            self.bad("awx.token_env", "must be the name of the environment variable that "
                     f"holds the AWX token, got {token_env!r}")
        templates = self.section("awx.templates", s.get("templates", {}), set(STEP_NAMES),
                                 required=STEP_NAMES if "templates" in s else ())
        found: dict[str, int | str] = {}
        for step, value in templates.items():
            if isinstance(value, bool) or not (
                    (isinstance(value, int) and value > 0)
                    or (isinstance(value, str) and value.strip())):
                self.bad(f"awx.templates.{step}", "must be the job template's name or id, "
                         f"got {value!r}")
            else:
                found[step] = value
        verify = self.boolean("awx.verify_tls", s.get("verify_tls", True))
        ca = self.path("awx.ca_file", s.get("ca_file"), kind="file", optional=True,
                       fix="the CA bundle (PEM) that signed AWX's certificate")
        if ca is not None and not verify:
            self.bad("awx.ca_file", "is set but awx.verify_tls is false: keep one (a CA "
                     "file verifies AWX's certificate)")
        timeout = self.seconds("awx.timeout_s", s.get("timeout_s", 3600))
        poll = self.seconds("awx.poll_s", s.get("poll_s", 2))
        if url is None or len(found) != len(STEP_NAMES):
            return None
        return AwxSettings(url=url.rstrip("/"), templates=found, token_file=path,
                           token_env=token_env if path is None else None, verify_tls=verify,
                           ca_file=ca, timeout_s=timeout, poll_s=poll)

    def python(self, raw: object) -> PythonSettings | None:
        s = self.section("python", raw, {"factory", "options"}, required=("factory",))
        factory = s.get("factory")
        if "factory" in s and (not isinstance(factory, str) or not _FACTORY.match(factory)):
            self.bad("python.factory", "must be MODULE:CALLABLE (e.g. mypackage.steps:"
                     f"make_steps, called with the settings), got {factory!r}")
            factory = None
        options = s.get("options", {})
        if not isinstance(options, Mapping):
            self.bad("python.options", f"must be a mapping, got {type(options).__name__}")
            options = {}
        if not isinstance(factory, str):
            return None
        return PythonSettings(factory=factory, options=dict(options))

    def guard_rails(self, raw: object) -> GuardRails | None:
        values = self.section("guard_rails", {} if raw is None else raw, None)
        try:
            return GuardRails.from_mapping(values)
        except GuardRailsInvalid as exc:
            self.bad("guard_rails:", f"{exc} (see aegis_controller.recovery.guard.GuardRails)")
        except TypeError as exc:
            self.bad("guard_rails:", f"{exc}")
        return None

    def terraform(self, raw: object) -> TerraformSettings | None:
        s = self.section("terraform", raw, {
            "root", "data_dir", "state", "var_file", "replace_address", "timeout_s",
            "lock_timeout_s", "env", "cli_config", "binary"}, required=("root", "data_dir"))
        if not s:
            return None
        root = self.path("terraform.root", s.get("root"), kind="dir",
                         fix="the directory of the Terraform root module that owns the nodes")
        if root is not None and not list(root.glob("*.tf")) and not list(root.glob("*.tf.json")):
            self.bad("terraform.root", f"{root} holds no .tf file: point it at the root module")
        data_dir = self.path("terraform.data_dir", s.get("data_dir"), kind="newdir",
                             fix="a directory for Terraform's TF_DATA_DIR (made if missing)")
        state = self.path("terraform.state", s.get("state"), kind="newfile", optional=True,
                          fix="the local state file (the module needs backend \"local\" {})")
        var_file = self.path("terraform.var_file", s.get("var_file"), kind="file",
                             optional=True, fix="a JSON file of the module's variables")
        if var_file is not None:
            try:
                _json_object(var_file, "terraform.var_file")
            except RecoverySettingsInvalid as exc:
                self.problems.append(str(exc))
        cli_config = self.path("terraform.cli_config", s.get("cli_config"), kind="file",
                               optional=True, fix="a Terraform CLI configuration file")
        address = s.get("replace_address", DEFAULT_REPLACE_ADDRESS)
        if not isinstance(address, str) or "{node}" not in address or not address.strip():
            self.bad("terraform.replace_address",
                     f"must be the node resource's address with {{node}} where the node id "
                     f"goes, e.g. {DEFAULT_REPLACE_ADDRESS}, got {address!r}")
        binary = s.get("binary", "terraform")
        if not isinstance(binary, str) or not binary.strip():
            self.bad("terraform.binary", f"must be the terraform command, got {binary!r}")
        timeout = self.seconds("terraform.timeout_s", s.get("timeout_s", 1800))
        lock = self.seconds("terraform.lock_timeout_s", s.get("lock_timeout_s", 60))
        env = self.env("terraform.env", s.get("env", {}))
        if root is None or data_dir is None:
            return None
        return TerraformSettings(root=root, data_dir=data_dir, state=state, var_file=var_file,
                                 replace_address=str(address), timeout_s=timeout,
                                 lock_timeout_s=lock, env=env, cli_config=cli_config,
                                 binary=str(binary))

    def vars_file(self, key: str, value: object, what: str,
                  check: Callable[[Path], object]) -> Path | None:
        """An optional file of play variables, read once now (``check``) to report it."""
        path = self.path(key, value, kind="file", optional=True,
                         fix=f"a YAML or JSON file of {what}")
        if path is not None:
            try:
                check(path)
            except RecoverySettingsInvalid as exc:
                self.problems.append(str(exc))
        return path

    def ansible(self, raw: object) -> AnsibleSettings | None:
        s = self.section("ansible", raw, {"inventory", "playbooks", "env", "agent_vars_file",
                                          "verify_vars_file", "quarantine_mode", "timeout_s",
                                          "golden_path", "verify_tags"},
                         required=("inventory",))
        if not s:
            return None
        inventory = self.path("ansible.inventory", s.get("inventory"), kind="exists",
                              fix="the inventory (file or directory) that names the nodes")
        if "playbooks" in s:
            playbooks = self.path("ansible.playbooks", s.get("playbooks"), kind="dir",
                                  fix="the aegis.fleet collection's playbooks directory")
        else:
            playbooks = default_playbooks_dir()
            if playbooks is None:
                self.bad("ansible.playbooks", "is required: this controller is not run from "
                         "an Aegis checkout; set it to the aegis.fleet collection's playbooks "
                         "directory (ansible_collections/aegis/fleet/playbooks)")
        if playbooks is not None:
            missing = [name for name in PLAYBOOKS if not (playbooks / name).is_file()]
            if missing:
                self.bad("ansible.playbooks", f"{playbooks} lacks {', '.join(missing)}: point "
                         f"it at a directory holding {', '.join(PLAYBOOKS)}")
        agent_vars = self.vars_file("ansible.agent_vars_file", s.get("agent_vars_file"),
                                    "the agent play's variables", _agent_vars)
        verify_vars = self.vars_file(
            "ansible.verify_vars_file", s.get("verify_vars_file"), "harden.yml's variables",
            lambda p: _load_mapping(p, "ansible.verify_vars_file", "YAML or JSON"))
        mode = s.get("quarantine_mode", "soft")
        if mode not in ("soft", "hard"):
            self.bad("ansible.quarantine_mode", "must be soft (egress cut except the "
                     "controller) or hard (also freeze the workloads), got " + repr(mode))
        golden = s.get("golden_path", DEFAULT_GOLDEN_PATH)
        if not isinstance(golden, str) or not golden.startswith("/"):
            self.bad("ansible.golden_path", "must be the absolute path of the golden record "
                     f"on a node (default {DEFAULT_GOLDEN_PATH}), got {golden!r}")
        tags = s.get("verify_tags")
        if tags is not None and (not isinstance(tags, str) or not re.fullmatch(
                r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*", tags)):
            self.bad("ansible.verify_tags", "must be harden.yml tags separated by commas "
                     f"(e.g. golden), or left out for the whole role; got {tags!r}")
            tags = None
        timeout = self.seconds("ansible.timeout_s", s.get("timeout_s", 1800))
        env = self.env("ansible.env", s.get("env", {}))
        if inventory is None or playbooks is None:
            return None
        return AnsibleSettings(inventory=inventory, playbooks=playbooks, env=env,
                               agent_vars_file=agent_vars, verify_vars_file=verify_vars,
                               quarantine_mode=str(mode),
                               timeout_s=timeout, golden_path=str(golden),
                               verify_tags=tags)

    def forensics(self, raw: object) -> ForensicsSettings | None:
        s = self.section("forensics", raw, {"recipient", "dest", "skip"})
        skip = self.boolean("forensics.skip", s.get("skip", False))
        recipient = s.get("recipient")
        if recipient is None:
            if not skip:
                self.bad("forensics.recipient", "is required: set it to the incident "
                         "response's age public key (age1...), or set forensics.skip: true "
                         "to replace nodes without a forensics bundle")
        elif not isinstance(recipient, str) or not _age_recipient(recipient):
            self.bad("forensics.recipient", "is not an age X25519 public key: it must be the "
                     "age1... line of `age-keygen -y` (never the AGE-SECRET-KEY)")
            recipient = None
        dest = None
        if "dest" in s or not skip:
            dest = self.path("forensics.dest", s.get("dest"), kind="newdir",
                             fix="the directory on the controller for forensics bundles")
        return ForensicsSettings(recipient=recipient, dest=dest, skip=skip)

    # -- values ---------------------------------------------------------------------------
    def section(self, name: str, raw: object, known: set[str] | None,
                required: tuple[str, ...] = ()) -> dict[str, Any]:
        where = name or "the file"
        if raw is None and name:
            self.bad(name, "is missing: add the section (see the example in "
                     "aegis_controller.recovery.settings)")
            return {}
        if not isinstance(raw, Mapping):
            self.bad(f"{name}:" if name else "the file",
                     f"must be a mapping of keys to values, got {type(raw).__name__}")
            return {}
        bad_names = [k for k in raw if not isinstance(k, str)]
        if bad_names:
            self.bad(where, f"has keys that are not names: {bad_names!r}")
        if known is not None:
            unknown = sorted(str(k) for k in raw if k not in known)
            if unknown:
                prefix = f"{name}." if name else ""
                self.bad(", ".join(prefix + k for k in unknown),
                         f"unknown (known in {where}: {', '.join(sorted(known))})")
        for key in required:
            if key not in raw:
                self.bad(f"{name}.{key}" if name else key, "is missing: it is required")
        return {k: v for k, v in raw.items() if isinstance(k, str)}

    def path(self, key: str, value: object, *, kind: str, fix: str,
             optional: bool = False) -> Path | None:
        if value is None:
            if not optional:
                self.bad(key, f"is required: {fix}")
            return None
        if not isinstance(value, str) or not value.strip():
            self.bad(key, f"must be a path: {fix}, got {value!r}")
            return None
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = self.base / path
        path = Path(str(path.resolve()))
        if kind == "dir" and not path.is_dir():
            self.bad(key, f"{path} is not a directory: {fix}")
        elif kind == "file" and not path.is_file():
            self.bad(key, f"{path} is not a file: {fix}")
        elif kind == "exists" and not path.exists():
            self.bad(key, f"{path} does not exist: {fix}")
        elif kind == "newdir" and path.exists() and not path.is_dir():
            self.bad(key, f"{path} exists and is not a directory: {fix}")
        elif kind == "newfile" and path.is_dir():
            self.bad(key, f"{path} is a directory: {fix}")
        return path

    def seconds(self, key: str, value: object) -> float:
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or value <= 0):
            self.bad(key, f"must be a number of seconds above 0, got {value!r}")
            return 1.0
        return float(value)

    def boolean(self, key: str, value: object) -> bool:
        if not isinstance(value, bool):
            self.bad(key, f"must be true or false, got {value!r}")
            return False
        return value

    def env(self, key: str, value: object) -> dict[str, str]:
        if not isinstance(value, Mapping):
            self.bad(key, f"must be a mapping of environment variable names to values, "
                     f"got {type(value).__name__}")
            return {}
        out: dict[str, str] = {}
        for name, val in value.items():
            if not isinstance(name, str) or not _ENV_NAME.match(name):
                self.bad(key, f"has {name!r}, which is not an environment variable name")
            elif isinstance(val, bool) or not isinstance(val, str | int | float):
                # the value is not shown: it may be a credential
                self.bad(f"{key}.{name}", "must be a string (quote it)")
            else:
                out[name] = str(val)
        return out


def _age_recipient(text: str) -> bool:
    from pyrage import x25519

    if not text.startswith("age1"):
        return False
    try:
        x25519.Recipient.from_str(text)
    except Exception:  # pyrage raises its own error types for a bad key
        return False
    return True


def _load_mapping(path: Path, key: str, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RecoverySettingsInvalid(f"{key} {path} cannot be read: {exc.strerror}") from None
    except yaml.YAMLError:
        raise RecoverySettingsInvalid(f"{key} {path} is not valid {what}: fix it") from None
    if not isinstance(data, dict):
        raise RecoverySettingsInvalid(
            f"{key} {path} must hold a mapping of variable names to values, "
            f"got {type(data).__name__}")
    return data


def _json_object(path: Path, key: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise RecoverySettingsInvalid(f"{key} {path} cannot be read: {exc.strerror}") from None
    except ValueError as exc:
        raise RecoverySettingsInvalid(
            f"{key} {path} is not JSON ({exc.msg} at line {exc.lineno}): Terraform's "
            "-var-file here must be a JSON object") from None
    if not isinstance(data, dict):
        raise RecoverySettingsInvalid(f"{key} {path} must be a JSON object of variables")
    return data


def _agent_vars(path: Path) -> dict[str, Any]:
    data = _load_mapping(path, "ansible.agent_vars_file", "YAML or JSON")
    tokens = [name for name in _TOKEN_VARS if name in data]
    if tokens:
        raise RecoverySettingsInvalid(
            f"ansible.agent_vars_file {path} sets {', '.join(tokens)}: remove it; the enroll "
            "step issues a one-time token per node through agent_bootstrap_token_command, so "
            "no file holds a token")
    if "agent_bootstrap_token_command" in data:
        raise RecoverySettingsInvalid(
            f"ansible.agent_vars_file {path} sets agent_bootstrap_token_command: remove it; "
            "the engine gives the enroll step its token command")
    return data
