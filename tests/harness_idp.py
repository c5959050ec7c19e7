"""The real OpenBao of the test run as the identity provider of just-in-time access: users
and groups from a ``userpass`` mount of their own, identity tokens (OpenBao's OIDC
provider: ``identity/oidc/key``, ``identity/oidc/role`` with a template that puts the
entity's group names in a ``groups`` claim, ``identity/oidc/token/<role>``), issuer
``<addr>/v1/identity/oidc``.

:func:`stand_in_token` makes tokens OpenBao would never issue — a key of the test's own, an
issuer or claims of its choice — for the bad-input tests only; its name says so.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import hvac
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from harness import OpenBao


@dataclass
class Idp:
    bao: OpenBao
    mount: str
    key: str
    role: str
    audience: str
    passwords: dict[str, str] = field(default_factory=dict, repr=False)

    tag: str = ""

    def group(self, name: str) -> str:
        """The OpenBao group name of test group ``name`` (identity groups are global)."""
        return f"{self.tag}-{name}"

    @property
    def issuer(self) -> str:
        return f"{self.bao.addr}/v1/identity/oidc"

    @property
    def root(self) -> hvac.Client:
        return hvac.Client(url=self.bao.addr, token=self.bao.token)

    def token(self, user: str, role: str | None = None) -> str:
        """A fresh identity token of ``user`` (logged in with userpass) from ``role``."""
        client = hvac.Client(url=self.bao.addr)
        client.auth.userpass.login(user, self.passwords[user], mount_point=self.mount)
        return client.read(f"identity/oidc/token/{role or self.role}")["data"]["token"]

    def add_role(self, name: str, ttl: str, client_id: str) -> str:
        """Another token role on the same key (another audience, or a short ttl)."""
        self.root.write(f"identity/oidc/role/{name}", key=self.key, ttl=ttl,
                        client_id=client_id, template=_TEMPLATE)
        self._allow(name)
        return name

    def rotate(self) -> None:
        """A new signing key: tokens issued from now on carry a new ``kid``."""
        self.root.write(f"identity/oidc/key/{self.key}/rotate")

    def _allow(self, role: str) -> None:
        policy = self.root.sys.read_policy(self.mount)["data"]["rules"] if self._has_policy() \
            else ""
        policy += f'path "identity/oidc/token/{role}" {{ capabilities = ["read"] }}\n'
        self.root.sys.create_or_update_policy(self.mount, policy)

    def _has_policy(self) -> bool:
        return self.mount in self.root.sys.list_policies()["data"]["policies"]


_TEMPLATE = '{"groups": {{identity.entity.groups.names}}, "name": {{identity.entity.name}}}'


def make_idp(bao: OpenBao, prefix: str, users: dict[str, list[str]]) -> Idp:
    """A userpass mount, a signing key and a token role of their own (names carry
    ``prefix``), and ``users`` (name -> groups, see :meth:`Idp.group`) with random
    passwords."""
    tag = prefix.lower().replace("_", "-")
    idp = Idp(bao, mount=f"{tag}-up", key=f"{tag}-key", role=f"{tag}-access",
              audience=f"{tag}-controller", tag=tag)
    root = idp.root
    root.sys.enable_auth_method("userpass", path=idp.mount)
    accessor = root.sys.list_auth_methods()["data"][f"{idp.mount}/"]["accessor"]
    root.write(f"identity/oidc/key/{idp.key}", allowed_client_ids="*", algorithm="RS256",
               rotation_period="24h", verification_ttl="2h")
    idp.add_role(idp.role, "10m", idp.audience)
    members: dict[str, list[str]] = {}
    for user, groups in users.items():
        idp.passwords[user] = secrets.token_urlsafe(12)
        root.write(f"auth/{idp.mount}/users/{user}", password=idp.passwords[user],
                   token_policies=idp.mount)
        entity = root.write("identity/entity", name=f"{tag}-{user}")["data"]["id"]
        root.write("identity/entity-alias", name=user, canonical_id=entity,
                   mount_accessor=accessor)
        for group in groups:
            members.setdefault(group, []).append(entity)
    for group, entities in members.items():
        root.write(f"identity/group/name/{idp.group(group)}", member_entity_ids=entities)
    return idp


def stand_in_token(claims: dict[str, Any], kid: str = "stand-in-key") -> str:
    """A token signed by a key of the test's own (never OpenBao's): for bad-input tests."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    body = {"iat": now, "exp": now + 300, "sub": "stand-in", **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})
