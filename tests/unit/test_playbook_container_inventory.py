"""Where a run inside an execution environment finds its inventory: the file is copied
into the private data dir under its own name, since an inventory plugin's source is
recognised by its name (``*.aegis_fleet.yml`` for aegis.fleet.fleet)."""

from __future__ import annotations

from pathlib import Path

from aegis_controller.playbook import Ansible, Container


def _placed(tmp_path: Path, inventory: Path | None, env: dict[str, str]) -> tuple[Path, dict]:
    private = tmp_path / "private"
    private.mkdir()
    ansible = Ansible(tmp_path / "runs", env=env, container=Container(image="localhost/ee:x"))
    kwargs: dict = {}
    envvars = dict(env)
    ansible._place(private, "run1", inventory, envvars, kwargs)
    assert "ANSIBLE_INVENTORY" not in envvars, "the host's path means nothing in the EE"
    assert kwargs["container_image"] == "localhost/ee:x" and kwargs["process_isolation"]
    return private, kwargs


def test_an_inventory_plugin_source_keeps_its_name(tmp_path: Path) -> None:
    source = tmp_path / "lab.aegis_fleet.yml"
    source.write_text("plugin: aegis.fleet.fleet\noutputs_file: /aegis-fleet/outputs.json\n")
    private, kwargs = _placed(tmp_path, source, {})
    placed = private / "inventory" / "lab.aegis_fleet.yml"
    assert [p.name for p in (private / "inventory").iterdir()] == [placed.name]
    assert placed.read_text() == source.read_text()
    assert oct(placed.stat().st_mode & 0o777) == "0o640"
    assert "inventory" not in kwargs  # the runner finds /runner/inventory itself


def test_the_environments_inventory_is_placed_the_same_way(tmp_path: Path) -> None:
    source = tmp_path / "hosts.ini"
    source.write_text("node1 ansible_host=192.0.2.7\n")
    private, _ = _placed(tmp_path, None, {"ANSIBLE_INVENTORY": str(source)})
    assert (private / "inventory" / "hosts.ini").read_text() == source.read_text()
