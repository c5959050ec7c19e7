"""Every feature of aegis.fleet.harden is switched in tasks/main.yml the same way: one task
file, a ``when:`` and a tag, so an operator can turn off or skip any piece by itself."""

import pytest
import yaml

from harness import REPO

pytestmark = pytest.mark.unit
TASKS = REPO / "roles" / "harden" / "tasks"
IMPORTS = ("ansible.builtin.import_tasks", "ansible.builtin.include_tasks")


def _file(task: dict) -> str | None:
    for key in IMPORTS:
        if key in task:
            value = task[key]
            return value["file"] if isinstance(value, dict) else value
    return None


def _feature_tasks() -> list[dict]:
    tasks = []
    for task in yaml.safe_load((TASKS / "main.yml").read_text()):
        tasks += [task, *task.get("block", []), *task.get("always", [])]
    return [t for t in tasks if _file(t)]


def test_every_feature_file_has_a_switch_and_a_tag():
    features = _feature_tasks()
    assert len(features) > 10
    for task in features:
        assert task.get("when"), f"{_file(task)}: no when: switch in main.yml"
        assert task.get("tags"), f"{_file(task)}: no tag in main.yml"


def test_task_files_do_not_test_the_package_lock_mode_themselves():
    for path in TASKS.glob("package_lock*.yml"):
        assert "harden_package_lock ==" not in path.read_text(), path.name


def test_every_task_file_is_switched_from_main():
    """... directly, or included by a feature's own file (nftables.yml includes its
    reconnect-and-confirm step only after a change)."""
    switched = {_file(t) for t in _feature_tasks()}
    included = {_file(t) for name in switched
                for t in yaml.safe_load((TASKS / name).read_text()) or [] if _file(t)}
    assert {p.name for p in TASKS.glob("*.yml")} - switched - included == {"main.yml"}
