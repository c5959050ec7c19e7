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
