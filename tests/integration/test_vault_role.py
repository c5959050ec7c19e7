"""The role aegis.fleet.vault run for real through ansible-playbook against the session's
OpenBao dev server and PostgreSQL: check mode on a fresh server changes nothing, converge,
a second run changes nothing, and what the role made does what the README promises (a
node's AppRole login reads its own KV path and gets PostgreSQL logins that really log in
and vanish on revocation, but reads no other role's path; the controller credential wraps
secret_ids and revokes, and is refused everything else). Bad input fails naming what to fix
and leaves the server as it was. No secret shows in Ansible's output at -vvv with --diff.

Each test uses its own name prefix and mount paths, so they share the session server."""

from __future__ import annotations

import json
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import harness_vault as hv
import hvac
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from harness_vault import PgAdmin, pg_connect, pg_role_exists
from hvac import exceptions as hvac_errors

from aegis_controller.playbook import Ansible
from aegis_lab.playbook import ansible_env
from conftest import sub_prefix
from harness import PATHS, OpenBao, free_port, openbao_dev

pytestmark = pytest.mark.integration

def _ssh_public_key() -> str:
    return Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _root(bao: OpenBao) -> hvac.Client:
    return hvac.Client(url=bao.addr, token=bao.token)


def _snapshot(client: hvac.Client) -> dict:
    """What the role could have changed on the server."""
    return {"mounts": sorted(client.read("sys/mounts")["data"]),
            "auth": sorted(client.read("sys/auth")["data"]),
            "policies": sorted(client.list("sys/policies/acl")["data"]["keys"]),
            "token_roles": sorted(((client.list("auth/token/roles") or {}).get("data") or {})
                                  .get("keys") or [])}


def _login(bao: OpenBao, approle_mount: str, role_id: str, secret_id: str) -> hvac.Client:
    node = hvac.Client(url=bao.addr)
    node.auth.approle.login(role_id=role_id, secret_id=secret_id, mount_point=approle_mount)
    return node


def test_check_converge_idempotent_and_no_secret_in_output(
        openbao: OpenBao, pg_admin: PgAdmin, tmp_path: Path) -> None:
    names, token_file = hv.names(), tmp_path / "controller-token"
    root = _root(openbao)
    ca_file = tmp_path / "user_ca.pub"
    role_vars = hv.role_vars(names, pg_admin, token_file, vault_ssh_ca_enabled=True,
                             vault_ssh_ca_public_key_file=str(ca_file))
    fresh = _snapshot(root)

    check = hv.play(openbao, tmp_path / "play.json", role_vars, "--check", "--diff", "-vvv",
                  pg=pg_admin)
    assert check.rc == 0, check.output[-4000:]
    assert check.changed > 0  # it reports what it would do...
    assert _snapshot(root) == fresh  # ...and does none of it
    assert not token_file.exists() and not ca_file.exists()

    first = hv.play(openbao, tmp_path / "play.json", role_vars, "--diff", "-vvv", pg=pg_admin)
    assert first.rc == 0, first.output[-4000:]
    assert first.changed > 0
    # the diff shows the changes: policies, mounts, the AppRoles' bindings, the connection
    for shown in (f'path "{names["vault_kv_mount"]}/data/web/*"',
                  f'sys/mounts/{names["vault_kv_mount"]}', '"192.0.2.10/32"',
                  f'"username": "{pg_admin.user}"', '"password": "updated"',
                  "sys/leases/revoke-prefix/", f'ssh role {names["vault_ssh_mount"]}/roles/'
                  "aegis-access", f'path "{names["vault_ssh_mount"]}/sign/aegis-access"'):
        assert shown in first.output, shown
    # the SSH CA of just-in-time access: a signing role for user certificates with the
    # caller's key IDs, and the CA's public key where aegis.fleet.harden takes it from
    ssh = names["vault_ssh_mount"]
    role = root.read(f"{ssh}/roles/aegis-access")["data"]
    assert (role["key_type"], role["allow_user_certificates"], role["allow_host_certificates"],
            role["allow_user_key_ids"], role["allowed_users"], role["ttl"],
            role["max_ttl"]) == ("ca", True, False, True, "*", 600, 86400), role
    public = root.read(f"{ssh}/config/ca")["data"]["public_key"].strip()
    assert public.startswith("ssh-ed25519 ") and ca_file.read_text() == public + "\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    controller_token = token_file.read_text().strip()

    second = hv.play(openbao, tmp_path / "play.json", role_vars, "--diff", pg=pg_admin)
    assert second.rc == 0, second.output[-4000:]
    assert second.changed == 0, second.output[-6000:]
    assert token_file.read_text().strip() == controller_token  # kept, not re-issued
    # the CA key is not generated again
    assert root.read(f"{ssh}/config/ca")["data"]["public_key"].strip() == public

    for value in (openbao.token, pg_admin.password, controller_token):
        for run in (check, first, second):
            assert value not in run.output


def test_runner_artifacts_hold_no_secret(openbao: OpenBao, pg_admin: PgAdmin,
                                         tmp_path: Path) -> None:
    """Through the controller's ansible-runner wrapper (what the recovery service uses):
    nothing it keeps on disk (events, stdout, command line) holds a secret."""
    names, token_file, runs = hv.names(), tmp_path / "controller-token", tmp_path / "runs"
    book = tmp_path / "play.json"
    book.write_text(json.dumps([{"name": "Vault wiring", "hosts": "localhost",
                                 "connection": "local", "gather_facts": False,
                                 "roles": [{"role": "aegis.fleet.vault",
                                            "vars": hv.role_vars(names, pg_admin, token_file)}]}]))
    env = ansible_env(PATHS)
    env.pop("ANSIBLE_INVENTORY", None)
    env.update(openbao.env, AEGIS_TEST_DB_PASSWORD=pg_admin.password)
    result = Ansible(runs, env=env).run(book)
    assert result.ok and result.changed > 0
    controller_token = token_file.read_text().strip()
    files = [f for f in runs.rglob("*") if f.is_file()]
    assert any(f.name == "stdout" for f in files)
    for f in files:
        data = f.read_bytes()
        for value in (openbao.token, pg_admin.password, controller_token):
            assert value.encode() not in data, f


def test_node_roles_from_inventory_groups(openbao: OpenBao, tmp_path: Path) -> None:
    """A group of the inventory becomes a node role: kv path GROUP/*, the hosts' addresses
    (names that are not addresses are left out) bound to its AppRole."""
    names = hv.names()
    (tmp_path / "hosts.ini").write_text(
        "[api]\na1 ansible_host=127.0.0.1\na2 ansible_host=192.0.2.7\n"
        "a3 ansible_host=api3.example.invalid\n")
    role_vars = hv.role_vars(names, None, None, vault_node_roles=[], vault_node_role_groups=["api"])
    run = hv.play(openbao, tmp_path / "play.json", role_vars, "-i", str(tmp_path / "hosts.ini"),
                hosts="api")
    assert run.rc == 0, run.output[-4000:]
    root, p = _root(openbao), names["vault_name_prefix"]
    role = root.read(f"auth/{names['vault_approle_mount']}/role/{p}-api")["data"]
    assert sorted(role["token_bound_cidrs"]) == ["127.0.0.1", "192.0.2.7"]
    assert sorted(role["secret_id_bound_cidrs"]) == ["127.0.0.1/32", "192.0.2.7/32"]
    assert role["secret_id_num_uses"] == 1 and role["token_policies"] == [f"{p}-node-api"]
    policy = root.read(f"sys/policies/acl/{p}-node-api")["data"]["policy"]
    assert f'path "{names["vault_kv_mount"]}/data/api/*"' in policy
    assert run.output.count("Make each node role's AppRole") == 1  # once, not per host


@pytest.fixture(scope="module")
def wired(openbao: OpenBao, pg_admin: PgAdmin, tmp_path_factory: pytest.TempPathFactory):
    """The role converged once for the behaviour tests below."""
    tmp = tmp_path_factory.mktemp("vault-wired")
    names, token_file = hv.names(), tmp / "controller-token"
    run = hv.play(openbao, tmp / "play.json", hv.role_vars(names, pg_admin, token_file,
                                                          vault_ssh_ca_enabled=True),
                  pg=pg_admin)
    assert run.rc == 0, run.output[-4000:]
    root = _root(openbao)
    kv = names["vault_kv_mount"]
    for role in ("web", "db"):
        root.secrets.kv.v2.create_or_update_secret(
            f"{role}/app", {"api_key": f"{role}-{secrets.token_hex(8)}"}, mount_point=kv)
    controller = hvac.Client(url=openbao.addr, token=token_file.read_text().strip())
    return names, root, controller


def _role_id(root: hvac.Client, names: dict, role: str) -> str:
    return root.read(f"auth/{names['vault_approle_mount']}/role/"
                     f"{names['vault_name_prefix']}-{role}/role-id")["data"]["role_id"]


def _wrapped_secret_id(controller: hvac.Client, names: dict, role: str, ttl: str = "30s") -> str:
    """A secret_id the controller gets response-wrapped, unwrapped the way a node would."""
    path = (f"auth/{names['vault_approle_mount']}/role/{names['vault_name_prefix']}-{role}"
            "/secret-id")
    wrapped = controller.adapter.post(f"/v1/{path}", headers={"X-Vault-Wrap-TTL": ttl})
    assert "data" not in wrapped or not wrapped["data"], "the secret_id came back unwrapped"
    wrap_token = wrapped["wrap_info"]["token"]
    assert wrapped["wrap_info"]["creation_path"] == path
    return hvac.Client(url=controller.url, token=wrap_token).sys.unwrap()["data"]["secret_id"]


def test_node_approle_reads_only_its_paths_and_db_creds_are_real(
        openbao: OpenBao, pg_admin: PgAdmin, wired) -> None:
    names, root, controller = wired
    kv, db = names["vault_kv_mount"], names["vault_database_mount"]
    secret_id = _wrapped_secret_id(controller, names, "web")
    node = _login(openbao, names["vault_approle_mount"], _role_id(root, names, "web"), secret_id)
    info = node.auth.token.lookup_self()["data"]
    assert f"{names['vault_name_prefix']}-node-web" in info["policies"]
    assert 0 < info["ttl"] <= 300  # token_ttl 5m

    # single use: the same secret_id does not log in twice
    with pytest.raises(hvac_errors.VaultError):
        _login(openbao, names["vault_approle_mount"], _role_id(root, names, "web"), secret_id)

    assert node.secrets.kv.v2.read_secret_version("web/app", mount_point=kv,
                                                  raise_on_deleted_version=True)["data"]["data"]
    with pytest.raises(hvac_errors.Forbidden):
        node.secrets.kv.v2.read_secret_version("db/app", mount_point=kv,
                                               raise_on_deleted_version=True)

    creds = node.read(f"{db}/creds/web")
    user, password = creds["data"]["username"], creds["data"]["password"]
    assert 0 < creds["lease_duration"] <= 600
    with pg_connect(pg_admin.server.port, user, password) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == user
        # the login is valid only until its lease ends
        until = conn.execute("SELECT rolvaliduntil FROM pg_roles WHERE rolname = current_user"
                             ).fetchone()[0]
        assert until is not None
        # a wrong password does not log in (the server checks passwords for these logins)
        with pytest.raises(psycopg.OperationalError):
            pg_connect(pg_admin.server.port, user, password + "x")
        # the controller revokes the role's leases by prefix: the open session ends, the login goes
        controller.write_data(f"sys/leases/revoke-prefix/{db}/creds/web", data={})
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert not pg_role_exists(pg_admin.server.port, user)
    with pytest.raises(psycopg.OperationalError):
        pg_connect(pg_admin.server.port, user, password)

    # the db role is bound to 192.0.2.10: its secret_id does not log in from here
    with pytest.raises(hvac_errors.VaultError):
        _login(openbao, names["vault_approle_mount"], _role_id(root, names, "db"),
               _wrapped_secret_id(controller, names, "db"))


def test_controller_credential_is_narrow(openbao: OpenBao, wired) -> None:
    names, root, controller = wired
    kv, approle = names["vault_kv_mount"], names["vault_approle_mount"]
    secret_path = f"auth/{approle}/role/{names['vault_name_prefix']}-web/secret-id"
    node = _login(openbao, approle, _role_id(root, names, "web"),
                  _wrapped_secret_id(controller, names, "web"))
    accessor = node.auth.token.lookup_self()["data"]["accessor"]

    looked = controller.write_data("auth/token/lookup-accessor", data={"accessor": accessor})
    assert looked["data"]["accessor"] == accessor
    assert "id" not in looked["data"] or not looked["data"]["id"]
    controller.write_data("auth/token/revoke-accessor", data={"accessor": accessor})
    with pytest.raises(hvac_errors.Forbidden):
        node.auth.token.lookup_self()
    with pytest.raises((hvac_errors.InvalidRequest, hvac_errors.Forbidden)):
        controller.write_data("auth/token/lookup-accessor", data={"accessor": accessor})

    refused = {
        "a secret_id without wrapping": lambda: controller.write_data(secret_path, data={}),
        "a wrapping TTL over 60 s": lambda: controller.adapter.post(
            f"/v1/{secret_path}", headers={"X-Vault-Wrap-TTL": "120s"}),
        "reading a KV secret": lambda: controller.secrets.kv.v2.read_secret_version(
            "web/app", mount_point=kv, raise_on_deleted_version=True),
        "reading database creds": lambda: controller.read(
            f"{names['vault_database_mount']}/creds/web"),
        "creating a policy": lambda: controller.sys.create_or_update_policy(
            "evil", 'path "*" { capabilities = ["sudo"] }'),
        "reading the role_id": lambda: controller.read(
            f"auth/{approle}/role/{names['vault_name_prefix']}-web/role-id"),
        "creating a token": lambda: controller.auth.token.create(policies=["default"]),
        "revoking leases outside the database mount": lambda: controller.write_data(
            f"sys/leases/revoke-prefix/{kv}", data={}),
        "signing with another role of the SSH CA": lambda: controller.write_data(
            f"{names['vault_ssh_mount']}/sign/any", data={"public_key": "x"}),
        "writing the SSH CA's roles": lambda: controller.write_data(
            f"{names['vault_ssh_mount']}/roles/aegis-access", data={"key_type": "ca"}),
    }
    for what, attempt in refused.items():
        with pytest.raises((hvac_errors.Forbidden, hvac_errors.InvalidRequest)) as err:
            attempt()
        assert "permission denied" in str(err.value) or "wrapping" in str(err.value), what
    # it signs a user certificate with the signing role, with the key ID it chooses
    signed = controller.write_data(f"{names['vault_ssh_mount']}/sign/aegis-access", data={
        "public_key": _ssh_public_key(), "cert_type": "user", "valid_principals": "adam",
        "key_id": "adam@aegis-access/r1", "ttl": "5m"})
    assert signed["data"]["signed_key"].startswith("ssh-ed25519-cert-v01@openssh.com ")
    with pytest.raises(hvac_errors.Forbidden):  # the one a test must show: 403 on a secret
        controller.secrets.kv.v2.read_secret_version("web/app", mount_point=kv,
                                                     raise_on_deleted_version=True)
    assert "evil" not in root.list("sys/policies/acl")["data"]["keys"]


@pytest.fixture
def sealed_openbao() -> Iterator[OpenBao]:
    with openbao_dev(sub_prefix()) as server:
        _root(server).sys.seal()
        yield server


@pytest.mark.parametrize("case", ["unknown-policy", "undefined-db-role", "unreachable", "sealed",
                                  "bad-token"])
def test_bad_input_fails_clearly_and_changes_nothing(
        case: str, openbao: OpenBao, pg_admin: PgAdmin, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    names = hv.names()
    bao, url, token = openbao, None, None
    role_vars = hv.role_vars(names, pg_admin, tmp_path / "controller-token")
    if case == "unknown-policy":
        role_vars["vault_node_roles"][0]["policies"] = ["no-such-policy"]
        expect = "policy not found on http://127.0.0.1:"
    elif case == "undefined-db-role":
        role_vars["vault_node_roles"][1]["database_roles"] = ["reporting"]
        expect = "database_roles names reporting, which is not in vault_database_roles"
    elif case == "unreachable":
        url = f"http://127.0.0.1:{free_port()}"
        expect = f"cannot reach the Vault server at {url}"
    elif case == "sealed":
        bao = request.getfixturevalue("sealed_openbao")
        expect = "is sealed: unseal it"
    else:
        token = "s." + secrets.token_urlsafe(18)
        expect = "the token was refused"
    before = _snapshot(_root(openbao))
    run = hv.play(bao, tmp_path / "play.json", role_vars, "-vvv", pg=pg_admin, url=url,
                token=token)
    assert run.rc != 0
    assert expect in run.output, run.output[-4000:]
    if case == "unknown-policy":
        assert "no-such-policy; create it first" in run.output
    assert re.search(r"changed=0\s", run.output), run.output[-2000:]
    assert _snapshot(_root(openbao)) == before
    assert not (tmp_path / "controller-token").exists()
    for value in (bao.token, pg_admin.password, token):
        assert not value or value not in run.output
    if case == "sealed":
        assert _root(bao).sys.read_seal_status()["sealed"]
