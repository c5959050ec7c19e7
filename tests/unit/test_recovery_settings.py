"""The recovery settings file: a good file loads with paths resolved against its directory;
every bad value gives one clear error naming the key and the fix; unknown keys are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pyrage import x25519

from aegis_controller.recovery.guard import GuardRails
from aegis_controller.recovery.settings import (
    DEFAULT_REPLACE_ADDRESS,
    RecoverySettings,
    RecoverySettingsInvalid,
    default_playbooks_dir,
)

pytestmark = pytest.mark.unit

STANDIN_PLAYBOOKS = Path(__file__).resolve().parent.parent / "fixtures" / "standin_playbooks"
RECIPIENT = str(x25519.Identity.generate().to_public())


@pytest.fixture
def base(tmp_path) -> Path:
    (tmp_path / "module").mkdir()
    (tmp_path / "module" / "main.tf").write_text("terraform {}\n")
    (tmp_path / "hosts.yml").write_text("all: {}\n")
    (tmp_path / "vars.json").write_text('{"nodes": ["a"]}')
    (tmp_path / "agent.yml").write_text("agent_controller_url: https://ctl:8443\n")
    return tmp_path


def good() -> dict:
    return {
        "guard_rails": {"max_in_flight": 2},
        "terraform": {"root": "module", "data_dir": "tf-data", "state": "fleet.tfstate",
                      "var_file": "vars.json", "timeout_s": 900, "lock_timeout_s": 30,
                      "env": {"AWS_PROFILE": "profile-7c1e"}},
        "ansible": {"inventory": "hosts.yml", "playbooks": str(STANDIN_PLAYBOOKS),
                    "agent_vars_file": "agent.yml", "quarantine_mode": "hard",
                    "env": {"ANSIBLE_CONFIG": "/etc/ansible/ansible.cfg"}},
        "forensics": {"recipient": RECIPIENT, "dest": "bundles"},
        "baked": True,
        "enroll_timeout_s": 300,
        "lease_s": 4,
        "poll_s": 0.5,
    }


def load(base: Path, data: object) -> RecoverySettings:
    path = base / "recovery.yml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return RecoverySettings.load(path)


def test_a_good_file_loads_with_paths_relative_to_it(base):
    s = load(base, good())
    assert s.guard_rails == GuardRails(max_in_flight=2)
    assert s.terraform.root == base / "module"
    assert s.terraform.data_dir == base / "tf-data"
    assert s.terraform.state == base / "fleet.tfstate"
    assert s.terraform.variables() == {"nodes": ["a"]}
    assert s.terraform.address("n2") == 'module.node["n2"].terraform_data.node'
    assert (s.terraform.timeout_s, s.terraform.lock_timeout_s) == (900, 30)
    assert s.terraform.env == {"AWS_PROFILE": "profile-7c1e"}
    assert "profile-7c1e" not in repr(s)  # env values (credentials) stay out of reprs
    assert s.ansible.inventory == base / "hosts.yml"
    assert s.ansible.quarantine_mode == "hard"
    assert s.ansible.agent_vars() == {"agent_controller_url": "https://ctl:8443"}
    assert s.forensics.recipient == RECIPIENT and s.forensics.dest == base / "bundles"
    assert s.baked is True and s.enroll_timeout_s == 300
    assert (s.lease_s, s.poll_s) == (4, 0.5)


def test_defaults(base):
    data = good()
    del data["guard_rails"], data["baked"], data["enroll_timeout_s"]
    del data["lease_s"], data["poll_s"]
    data["terraform"] = {"root": "module", "data_dir": "tf-data"}
    data["ansible"] = {"inventory": "hosts.yml", "playbooks": str(STANDIN_PLAYBOOKS)}
    s = load(base, data)
    assert s.guard_rails == GuardRails()
    assert s.terraform.replace_address == DEFAULT_REPLACE_ADDRESS
    assert s.terraform.state is None and s.terraform.var_file is None
    assert s.terraform.variables() is None
    assert s.ansible.quarantine_mode == "soft"
    assert s.ansible.verify_tags is None  # the whole harden role
    assert s.ansible.golden_path == "/var/lib/aegis/golden.json"
    assert s.baked is False
    assert (s.lease_s, s.poll_s) == (60, 5)


def test_playbooks_default_to_the_collections_own(base):
    repo = Path(__file__).resolve().parents[2]
    assert default_playbooks_dir() == repo / "playbooks"
    data = good()
    del data["ansible"]["playbooks"]
    missing = [n for n in ("quarantine.yml", "forensics.yml", "harden.yml", "agent.yml")
               if not (repo / "playbooks" / n).is_file()]
    if missing:  # the recovery playbooks are not in this checkout yet: named as missing
        with pytest.raises(RecoverySettingsInvalid,
                           match=f"ansible.playbooks {repo}/playbooks lacks {missing[0]}"):
            load(base, data)
    else:
        assert load(base, data).ansible.playbooks == repo / "playbooks"


def test_forensics_may_be_skipped_explicitly(base):
    data = good()
    data["forensics"] = {"skip": True}
    s = load(base, data)
    assert s.forensics.skip and s.forensics.recipient is None and s.forensics.dest is None


def _bad(base, mutate) -> str:
    data = good()
    mutate(data)
    with pytest.raises(RecoverySettingsInvalid) as err:
        load(base, data)
    return str(err.value)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d.pop("terraform"), "terraform is missing: add the section"),
    (lambda d: d.update(extra=1), "extra unknown"),
    (lambda d: d["terraform"].update(replace_adress="x"), "terraform.replace_adress unknown"),
    (lambda d: d["ansible"].update(playbook="x"), "ansible.playbook unknown"),
    (lambda d: d["terraform"].pop("root"), "terraform.root is missing: it is required"),
    (lambda d: d["terraform"].update(root="nowhere"),
     "terraform.root {base}/nowhere is not a directory: the directory of the Terraform root"),
    (lambda d: d["terraform"].update(root="."), "holds no .tf file"),
    (lambda d: d["terraform"].update(replace_address="module.node.x"),
     "terraform.replace_address must be the node resource's address with {node}"),
    (lambda d: d["terraform"].update(timeout_s=0),
     "terraform.timeout_s must be a number of seconds above 0, got 0"),
    (lambda d: d["terraform"].update(lock_timeout_s="soon"),
     "terraform.lock_timeout_s must be a number of seconds above 0, got 'soon'"),
    (lambda d: d["terraform"].update(var_file="hosts.yml"),
     "terraform.var_file {base}/hosts.yml is not JSON"),
    (lambda d: d["terraform"].update(state="module"), "terraform.state {base}/module is a "
     "directory"),
    (lambda d: d["terraform"].update(env={"AWS_SECRET": ["x"]}),
     "terraform.env.AWS_SECRET must be a string"),
    (lambda d: d["terraform"].update(env={"BAD NAME": "x"}),
     "'BAD NAME', which is not an environment variable name"),
    (lambda d: d["ansible"].update(inventory="missing.yml"),
     "ansible.inventory {base}/missing.yml does not exist"),
    (lambda d: d["ansible"].update(playbooks="module"),
     "ansible.playbooks {base}/module lacks quarantine.yml, forensics.yml, harden.yml, "
     "agent.yml"),
    (lambda d: d["ansible"].update(verify_tags="golden; rm -rf /"),
     "ansible.verify_tags must be harden.yml tags separated by commas"),
    (lambda d: d["ansible"].update(quarantine_mode="medium"),
     "ansible.quarantine_mode must be soft (egress cut except the controller) or hard"),
    (lambda d: d["ansible"].update(golden_path="golden.json"),
     "ansible.golden_path must be the absolute path"),
    (lambda d: d["ansible"].update(agent_vars_file="vars.json", timeout_s=-1),
     "ansible.timeout_s must be a number of seconds above 0, got -1"),
    (lambda d: d["forensics"].pop("recipient"),
     "forensics.recipient is required: set it to the incident response's age public key"),
    (lambda d: d["forensics"].update(recipient="age1notakey"),
     "forensics.recipient is not an age X25519 public key"),
    (lambda d: d["forensics"].update(recipient="AGE-SECRET-KEY-1XYZ"),
     "never the AGE-SECRET-KEY"),
    (lambda d: d["forensics"].pop("dest"), "forensics.dest is required"),
    (lambda d: d["forensics"].update(skip="yes please"),
     "forensics.skip must be true or false, got 'yes please'"),
    (lambda d: d.update(baked="true"), "baked must be true or false, got 'true'"),
    (lambda d: d.update(enroll_timeout_s=True), "enroll_timeout_s must be a number of seconds"),
    (lambda d: d.update(lease_s=0), "lease_s must be a number of seconds above 0, got 0"),
    (lambda d: d.update(poll_s="1s"), "poll_s must be a number of seconds above 0, got '1s'"),
    (lambda d: d["guard_rails"].update(max_in_flight=0),
     "max_in_flight must be at least 1, got 0"),
    (lambda d: d["guard_rails"].update(max_flight=2), "unknown recovery guard rail(s) max_flight"),
])
def test_each_bad_value_is_named_with_its_fix(base, mutate, expected):
    message = _bad(base, mutate)
    assert expected.replace("{base}", str(base)) in message
    assert message.startswith(f"recovery settings {base / 'recovery.yml'}: ")


def test_every_problem_is_reported_at_once(base):
    def mutate(d):
        d["terraform"]["timeout_s"] = -5
        d["ansible"]["quarantine_mode"] = "x"
        d["forensics"]["recipient"] = "nope"
    message = _bad(base, mutate)
    for key in ("terraform.timeout_s", "ansible.quarantine_mode", "forensics.recipient"):
        assert key in message


def test_a_token_in_the_agent_vars_file_is_refused(base):
    (base / "agent.yml").write_text("agent_bootstrap_tokens: {n1: abc}\n")
    message = _bad(base, lambda d: None)
    assert "sets agent_bootstrap_tokens: remove it" in message
    assert "abc" not in message


def test_the_verify_vars_file_must_exist_and_hold_a_mapping(base):
    message = _bad(base, lambda d: d["ansible"].update(verify_vars_file="harden-vars.yml"))
    assert f"ansible.verify_vars_file {base}/harden-vars.yml cannot be read" in message
    (base / "harden-vars.yml").write_text("- not\n- a mapping\n")
    message = _bad(base, lambda d: d["ansible"].update(verify_vars_file="harden-vars.yml"))
    assert "ansible.verify_vars_file" in message and "must hold a mapping" in message
    (base / "harden-vars.yml").write_text("harden_nftables_allow_controller: false\n")
    data = good()
    data["ansible"]["verify_vars_file"] = "harden-vars.yml"
    assert load(base, data).ansible.verify_vars() == {"harden_nftables_allow_controller": False}


def test_credentials_in_env_are_not_echoed(base):
    message = _bad(base, lambda d: d["terraform"].update(env={"TOKEN": {"v": "hush-123"}}))
    assert "terraform.env.TOKEN must be a string" in message
    assert "hush-123" not in message


def test_file_level_problems(base, tmp_path):
    with pytest.raises(RecoverySettingsInvalid, match="does not exist: create it"):
        RecoverySettings.load(tmp_path / "none.yml")
    with pytest.raises(RecoverySettingsInvalid, match="not valid YAML at line 3: fix the syntax"):
        load(base, "terraform:\n  root: [\n")
    with pytest.raises(RecoverySettingsInvalid, match="the file must be a mapping"):
        load(base, "- a\n- b\n")


def awx_good(base: Path) -> dict:
    token = base / "awx.token"
    token.write_text("awx-token-c0ffee-91\n")
    token.chmod(0o600)
    return {"backend": "awx", "guard_rails": {"max_in_flight": 3},
            "awx": {"url": "https://awx.example.com/", "token_file": "awx.token",
                    "templates": {"contain": "aegis-quarantine", "collect": 12,
                                  "replace": "aegis-rebuild", "verify": "aegis-verify",
                                  "enroll": "aegis-enroll"}}}


def test_the_awx_backend_loads_with_its_defaults(base):
    s = load(base, awx_good(base))
    assert s.backend == "awx" and s.terraform is None and s.ansible is None
    assert s.awx is not None and s.awx.url == "https://awx.example.com"
    assert s.awx.token_file == base / "awx.token" and s.awx.token_env is None
    assert s.awx.templates["collect"] == 12
    assert (s.awx.verify_tls, s.awx.ca_file, s.awx.timeout_s, s.awx.poll_s) == (
        True, None, 3600, 2)
    assert s.awx.token() == "awx-token-c0ffee-91"  # read when used, not kept
    assert "awx-token-c0ffee-91" not in repr(s)
    assert load(base, {**awx_good(base), "backend": "awx"}).guard_rails.max_in_flight == 3


def _bad_awx(base, mutate) -> str:
    data = awx_good(base)
    mutate(data)
    with pytest.raises(RecoverySettingsInvalid) as err:
        load(base, data)
    message = str(err.value)
    assert "awx-token-c0ffee-91" not in message
    return message


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d.pop("awx"), "awx is missing: add the section"),
    (lambda d: d.update(backend="tower"), "backend must be one of runner, awx, python"),
    (lambda d: d.update(terraform={"root": "module"}),
     "terraform: is only used by backend runner, but backend is awx: remove the section or "
     "set backend: runner"),
    (lambda d: d["awx"].update(url="awx.example.com"), "awx.url must be AWX's base URL"),
    (lambda d: d["awx"].update(token_env="AWX_TOKEN"), "awx.token_file, awx.token_env set "  # noqa: S106 - names, and a test token
     "exactly one"),
    (lambda d: d["awx"].pop("token_file"), "awx.token_file, awx.token_env set exactly one"),
    (lambda d: d["awx"].update(token_file="none.token"), "awx.token_file {base}/none.token "  # noqa: S106 - names, and a test token
     "is not a file"),
    (lambda d: (d["awx"].pop("token_file"), d["awx"].update(token_env="awx token")),  # noqa: S106 - names, and a test token
     "awx.token_env must be the name of the environment variable"),
    (lambda d: d["awx"]["templates"].pop("verify"), "awx.templates.verify is missing"),
    (lambda d: d["awx"].pop("templates"), "awx.templates is missing: it is required"),
    (lambda d: d["awx"]["templates"].update(rollback="x"), "awx.templates.rollback unknown"),
    (lambda d: d["awx"]["templates"].update(replace=""), "awx.templates.replace must be the "
     "job template's name or id, got ''"),
    (lambda d: d["awx"]["templates"].update(replace=True), "awx.templates.replace must be"),
    (lambda d: d["awx"].update(verify_tls=False, ca_file="hosts.yml"),
     "awx.ca_file is set but awx.verify_tls is false"),
    (lambda d: d["awx"].update(ca_file="none.pem"), "awx.ca_file {base}/none.pem is not a file"),
    (lambda d: d["awx"].update(timeout_s=0), "awx.timeout_s must be a number of seconds"),
    (lambda d: d["awx"].update(token="awx-token-c0ffee-91"), "awx.token unknown"),  # noqa: S106 - names, and a test token
    (lambda d: d.update(python={"factory": "x:y"}), "python: is only used by backend python"),
])
def test_each_bad_awx_value_is_named_with_its_fix(base, mutate, expected):
    message = _bad_awx(base, mutate)
    assert expected.replace("{base}", str(base)) in message


def test_a_token_file_others_can_read_is_refused(base):
    data = awx_good(base)
    (base / "awx.token").chmod(0o644)
    with pytest.raises(RecoverySettingsInvalid, match=r"readable by others than its owner: "
                                                      r"chmod 600 .*awx.token"):
        load(base, data)


def test_the_runner_backend_refuses_an_awx_section(base):
    data = good()
    data["awx"] = awx_good(base)["awx"]
    message = _bad(base, lambda d: d.update(awx=data["awx"]))
    assert "awx: is only used by backend awx, but backend is runner" in message


def test_the_python_backend_names_a_factory(base):
    s = load(base, {"backend": "python",
                    "python": {"factory": "mypkg.steps:make", "options": {"url": "x"}}})
    assert s.python is not None and s.python.factory == "mypkg.steps:make"
    assert s.python.options == {"url": "x"}
    message = _bad(base, lambda d: d.clear() or d.update(backend="python",
                                                         python={"factory": "make_steps"}))
    assert "python.factory must be MODULE:CALLABLE" in message
