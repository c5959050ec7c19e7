"""The Terraform runner against the real terraform binary and a module of
terraform_data resources with local-exec provisioners (no registry needed)."""

import json
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from aegis_controller.terraform import (
    Terraform,
    TerraformCancelled,
    TerraformError,
    TerraformTimeout,
)
from harness import PATHS

pytestmark = pytest.mark.integration

MODULE = """
terraform {
  backend "local" {}
}

variable "names" { type = set(string) }
variable "sleep" {
  type    = number
  default = 0
}
variable "marker_dir" { type = string }

resource "terraform_data" "item" {
  for_each = var.names
  input    = { name = each.key, dir = var.marker_dir, sleep = var.sleep }
  provisioner "local-exec" {
    command = "sleep ${self.input.sleep} && echo $RANDOM > ${self.input.dir}/${self.input.name}"
  }
  provisioner "local-exec" {
    when    = destroy
    command = "rm -f ${self.input.dir}/${self.input.name}"
  }
}

output "ids" {
  value = { for k, v in terraform_data.item : k => v.id }
}
"""


@pytest.fixture
def tf(tmp_path) -> Terraform:
    module = tmp_path / "module"
    module.mkdir()
    (module / "main.tf").write_text(MODULE)
    (tmp_path / "markers").mkdir()
    runner = Terraform(module, data_dir=tmp_path / "data", state_path=tmp_path / "state.tfstate",
                       cli_config_file=PATHS.terraform_cli_config)
    runner.init()
    return runner


def _vars(tmp_path: Path, names, sleep=0):
    return {"names": sorted(names), "sleep": sleep, "marker_dir": str(tmp_path / "markers")}


def test_apply_replace_output_destroy(tf, tmp_path):
    seen = []
    result = tf.apply(_vars(tmp_path, ["a", "b"]), on_event=seen.append)
    assert (result.changes["add"], result.changes["change"], result.changes["remove"]) == (
        2, 0, 0)
    assert sorted(a for a, act in result.resources if act == "create") == [
        'terraform_data.item["a"]', 'terraform_data.item["b"]']
    assert [e.type for e in seen] == [e.type for e in result.events]
    assert "apply_complete" in [e.type for e in seen]
    assert sorted(os.listdir(tmp_path / "markers")) == ["a", "b"]
    # state went to the given path, not into the module directory
    assert (tmp_path / "state.tfstate").exists()
    assert not (tf.working_dir / "terraform.tfstate").exists()

    before = tf.output()["ids"]
    assert set(before) == {"a", "b"}
    assert result.outputs["ids"] == before

    # a second apply changes nothing
    again = tf.apply(_vars(tmp_path, ["a", "b"]))
    assert (again.changes["add"], again.changes["remove"]) == (0, 0)

    replaced = tf.apply(_vars(tmp_path, ["a", "b"]), replace=['terraform_data.item["b"]'])
    assert (replaced.changes["add"], replaced.changes["remove"]) == (1, 1)
    after = tf.output()["ids"]
    assert after["a"] == before["a"]
    assert after["b"] != before["b"]

    gone = tf.destroy(_vars(tmp_path, ["a", "b"]))
    assert gone.changes["remove"] == 2
    assert os.listdir(tmp_path / "markers") == []
    assert json.loads((tmp_path / "state.tfstate").read_text())["resources"] == []
    # temporary var files are removed
    assert not list((tmp_path / "data").glob("*.tfvars.json"))


def test_error_carries_terraform_diagnostics(tf, tmp_path):
    with pytest.raises(TerraformError) as info:
        tf.apply({"names": "not-a-set", "marker_dir": str(tmp_path)})
    err = info.value
    assert err.verb == "apply"
    assert err.returncode == 1
    assert any(d["severity"] == "error" for d in err.diagnostics)
    assert "Invalid value for input variable" in str(err) or "Invalid value" in str(err)


def test_undeclared_variable_is_an_error_not_a_warning(tf, tmp_path):
    with pytest.raises(TerraformError, match="names"):
        tf.apply({"marker_dir": str(tmp_path)})


def _processes_with(needle: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if needle in cmd:
                pids.append(int(entry.name))
    return pids


def test_timeout_stops_terraform_and_its_provisioners(tf, tmp_path):
    # a unique sleep length identifies this test's provisioner processes
    secs = f"{300 + uuid.uuid4().int % 1000}.{os.getpid() % 1000}"
    started = time.monotonic()
    with pytest.raises(TerraformTimeout, match="did not finish in 3 s"):
        tf.apply(_vars(tmp_path, ["slow"], sleep=secs), timeout=3)
    assert time.monotonic() - started < 60
    assert _processes_with(f"sleep {secs}") == []
    assert _processes_with(str(tf.working_dir)) == []


def test_cancel_stops_a_running_apply(tf, tmp_path):
    cancel = threading.Event()
    secs = f"{300 + uuid.uuid4().int % 1000}.{os.getpid() % 1000 + 1}"

    def on_event(ev):
        if ev.type == "provision_start":
            cancel.set()

    with pytest.raises(TerraformCancelled):
        tf.apply(_vars(tmp_path, ["slow"], sleep=secs), on_event=on_event, cancel=cancel)
    assert cancel.is_set()
    assert _processes_with(f"sleep {secs}") == []


def test_plan_show_and_the_process_group_reported_before_the_wait(tf, tmp_path):
    groups: list[tuple[int, int]] = []

    def on_start(pgid: int) -> None:
        groups.append((pgid, os.getpgid(pgid)))  # alive and leading its own group

    tf.apply(_vars(tmp_path, ["a", "b"]), on_start=on_start)
    assert len(groups) == 1 and groups[0][0] == groups[0][1]
    state = (tmp_path / "state.tfstate").read_bytes()
    plan = tf.plan(_vars(tmp_path, ["a", "b"]), replace=['terraform_data.item["a"]'],
                   on_start=on_start)
    assert plan.planned == [('terraform_data.item["a"]', "replace")]
    assert plan.summary == "Plan: 1 to add, 0 to change, 1 to destroy."
    assert plan.lines[-1] == plan.summary
    assert (tmp_path / "state.tfstate").read_bytes() == state  # nothing applied
    values = tf.state_resource('terraform_data.item["a"]')
    assert values is not None and values["id"] == tf.output()["ids"]["a"]
    assert len(tf.state_resources('terraform_data.item["b"]')) == 1
    assert tf.state_resource('terraform_data.item["zz"]') is None
