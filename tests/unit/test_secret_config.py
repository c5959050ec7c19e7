"""The agent config's ``secrets`` section: what it accepts, and the one-line errors by key
that ``aegis-agent check-config`` prints for what it does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aegis_agent.config import ConfigError, parse_config

pytestmark = pytest.mark.unit

HEAD = """
node_id: n1
controller: {url: "https://127.0.0.1:8443", ca_file: /etc/aegis/controller-ca.pem}
"""
GOOD = HEAD + """
secrets:
  url: http://127.0.0.1:8200
  approle_mount: aegis-approle
  role: aegis-web
  role_id: 0b9d1c2e-role-id
  files:
    - name: api_key
      kv: {mount: aegis-kv, path: web/app, field: api_key}
      owner: www-data
      group: www-data
      mode: 0440
      reload: [systemctl, reload, app.service]
    - name: db.env
      database: {mount: aegis-db, role: web}
      template: "PGUSER={username}\\nPGPASSWORD={password}\\n"
      mode: "0400"
"""


def test_a_full_section_loads_with_its_defaults() -> None:
    sc = parse_config(GOOD).secrets
    assert sc is not None
    assert str(sc.dir) == "/run/aegis/secrets" and sc.fraction == pytest.approx(2 / 3)
    assert sc.jitter == 0.1 and sc.revoke_delay == 5.0
    api, db = sc.files
    assert (api.source, api.mode, api.owner) == ("kv", 0o440, "www-data")
    assert (db.source, db.mode, db.reload) == ("database", 0o400, None)
    assert api.render({"value": "v"}) == b"v"
    assert db.render({"username": "u", "password": "p"}) == b"PGUSER=u\nPGPASSWORD=p\n"
    assert "0b9d1c2e" not in repr(sc)  # the role_id stays out of reprs and tracebacks


def test_default_templates() -> None:
    sc = parse_config(HEAD + """
secrets:
  url: http://127.0.0.1:8200
  role: r
  role_id: x
  files:
    - {name: a, kv: {mount: kv, path: p, field: f}}
    - {name: b, database: {mount: db, role: web}}
""").secrets
    assert sc is not None
    assert sc.files[0].render({"value": "v"}) == b"v"
    assert sc.files[1].render({"username": "u", "password": "p"}) == b"username=u\npassword=p\n"


def _section(files: str, **over: str) -> str:
    keys = {"url": "http://127.0.0.1:8200", "role": "aegis-web", "role_id": "x", **over}
    return HEAD + "secrets:\n" + "".join(f"  {k}: {v}\n" for k, v in keys.items()) + files


KV = "{mount: kv, path: web/app, field: f}"


@pytest.mark.parametrize(("text", "expected"), [
    (_section(f"  files:\n    - {{name: a, kv: {KV}, mode: 0644}}\n"),
     "secrets.files[0].mode: mode 0644 is not allowed: use 0400"),
    (_section(f"  files:\n    - {{name: a, kv: {KV}, mode: 0600}}\n"),
     "secrets.files[0].mode: mode 0600 is not allowed"),
    (_section("  files:\n    - {name: a}\n"),
     "secrets.files[0]: file 'a' needs exactly one source"),
    (_section(f"  files:\n    - {{name: a, kv: {KV}, database: {{mount: db, role: web}}}}\n"),
     "secrets.files[0]: file 'a' needs exactly one source"),
    (_section(f"  files:\n    - {{name: ../a, kv: {KV}}}\n"), "secrets.files[0].name"),
    (_section("  files:\n    - {name: a, kv: {mount: kv, path: a/../b, field: f}}\n"),
     "secrets.files[0].kv.path: bad path 'a/../b'"),
    (_section(f"  files:\n    - {{name: a, kv: {KV}, template: 'x{{password}}'}}\n"),
     "template placeholder {password} is not known for a kv source; use {value}"),
    (_section("  files:\n    - {name: a, database: {mount: db, role: web}, "
              "template: '{value.__class__}'}\n"),
     "template placeholder {value.__class__} is not known"),
    (_section(f"  files:\n    - {{name: a, kv: {KV}, template: '{{value'}}\n"),
     "template is not valid"),
    (_section(f"  files:\n    - {{name: a, kv: {KV}}}\n    - {{name: a, kv: {KV}}}\n"),
     "secrets: files: name(s) a given more than once"),
    (_section(f"  files:\n    - {{name: a, kv: {KV}, reload: []}}\n"),
     "secrets.files[0].reload"),
    (_section(f"  files:\n    - {{name: a, kv: {KV}}}\n", url="http://10.0.0.1:8200"),
     "secrets.url"),
    (_section(f"  files:\n    - {{name: a, kv: {KV}}}\n", role="Web!"), "secrets.role"),
    (_section(f"  files:\n    - {{name: a, kv: {KV}}}\n", fraction="0.95"), "secrets.fraction"),
    (_section("  files: []\n"), "secrets.files"),
    (_section(f"  files:\n    - {{name: a, kv: {KV}}}\n", colour="red"),
     "secrets.colour: unknown key"),
    ("secrets: {url: 'http://127.0.0.1:1', role: r, role_id: x, files: "
     "[{name: a, kv: {mount: kv, path: p, field: f}}]}",
     "secrets needs controller"),
])
def test_bad_sections_say_which_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert any(expected in p for p in e.value.problems), e.value.problems


def test_check_config_prints_the_problems_by_key(tmp_path: Path) -> None:
    bad = tmp_path / "agent.yaml"
    bad.write_text(_section(f"  files:\n    - {{name: a, kv: {KV}, mode: 0666}}\n"))
    p = subprocess.run([str(Path(sys.executable).with_name("aegis-agent")), "check-config",
                        str(bad)], capture_output=True, text=True, check=False)
    assert p.returncode == 2, p
    assert "secrets.files[0].mode: mode 0666 is not allowed" in p.stdout + p.stderr
