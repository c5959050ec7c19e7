# -*- coding: utf-8 -*-
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: vault_lease
author:
  - Aegis contributors (@aegis)
short_description: Lease a short-lived secret from Vault/OpenBao for the length of one run
version_added: 0.1.0
description:
  - Reads each path in O(_terms) from a Vault-compatible server (OpenBao, HashiCorp Vault), for
    example a dynamic database credential (V(database/creds/app)) or a KV v2 secret
    (V(secret/data/app)), and returns its data (or one O(field)) marked unsafe, so Jinja never
    templates what the secret contains.
  - Every lease it takes is revoked at the end of the run. Ansible runs lookups in a worker
    process forked for each task and host, which ends with the task (an C(atexit) handler there
    never runs), so the lookup hands each lease to a small I(keeper) process of its own, detached
    from the worker, that holds the URL, token and lease id in memory only and revokes the lease
    when told to by the M(aegis.fleet.vault_lease_revoke) callback at the end of the run (enable
    it with C(callbacks_enabled = aegis.fleet.vault_lease_revoke); the run then waits for the
    revocations and reports them), or by itself as soon as the ansible-playbook process ends,
    however it ends (failure, Ctrl-C, C(kill -9)), or when the lease's TTL has run out.
  - The only thing written to disk is the lease id (not a secret), in a private run directory
    C(<tmp>/aegis-vault-lease-<uid>/<playbook pid>-<start time>/) (mode 0700). The token and the
    secret never reach a file, an argument list or the environment of another process.
  - The plugin never prints the secret (at C(-vvv) it names the path, lease id and TTL only).
    What a task does with the value is the task's business, so give C(no_log=true) to every
    task that receives it (C(set_fact), module arguments), and C(--diff) and ansible-runner
    artifacts stay clean too.
  - Never hand the secret to a command through the C(environment) keyword, even with
    C(no_log=true) - Ansible prints the command line with the task's environment at C(-vvv)
    (and other users see it in C(ps)). Give it as a module argument (a C(login_password), the
    C(stdin) of M(ansible.builtin.command)).
  - Under ansible-runner (AWX, the Aegis controller) give the token with O(token_file), not
    E(VAULT_TOKEN) - ansible-runner writes the run's whole environment into its artifacts
    (C(artifacts/<ident>/command)).
  - Each evaluation takes a new lease. Read it once per host with C(ansible.builtin.set_fact)
    (with C(no_log=true)) rather than from play C(vars), which are templated again at every use.
requirements:
  - hvac (Python library on the control node)
  - Linux control node (the keeper watches ansible-playbook with a pidfd)
options:
  _terms:
    description: Paths to read, relative to C(/v1/), for example V(database/creds/app) or V(secret/data/app).
    required: true
    type: list
    elements: str
  url:
    description:
      - Address of the server. V(https://) is required unless the host is loopback
        (V(127.0.0.1), V(::1), V(localhost)), where plain V(http://) is accepted.
    type: str
    required: true
    env:
      - name: VAULT_ADDR
      - name: BAO_ADDR
    vars:
      - name: aegis_vault_url
  token:
    description:
      - Token to read the secret and revoke its lease with. Its policy needs C(read) on the path
        and C(update) on C(sys/leases/revoke/<path>/*) (or on C(sys/leases/revoke)).
      - When unset, O(token_file) is read.
    type: str
    env:
      - name: VAULT_TOKEN
      - name: BAO_TOKEN
  token_file:
    description: File holding the token, read when O(token) is not set.
    type: path
    env:
      - name: VAULT_TOKEN_FILE
    vars:
      - name: aegis_vault_token_file
  ca_cert:
    description: CA bundle to verify the server's certificate with (https only); the system's by default.
    type: path
    env:
      - name: VAULT_CACERT
      - name: BAO_CACERT
    vars:
      - name: aegis_vault_ca_cert
  field:
    description:
      - Return only this key of the secret's data instead of the whole mapping.
      - For KV v2 (a response holding C(data) and C(metadata)) the keys are those of the secret itself.
    type: str
  ttl:
    description:
      - Ask for this lease duration in seconds right after the read (a renewal with this
        increment); the server caps it at the role's C(max_ttl). Unset keeps the role's default.
      - Has no effect on a secret without a lease (KV).
    type: int
    aliases: [increment]
  timeout:
    description: Seconds to wait for the server.
    type: int
    default: 30
notes:
  - Leases are revoked at the end of the run (ansible-playbook), not at the end of each play,
    so a value read in one play can be used by the next.
  - Without the callback the keepers revoke right after ansible-playbook exits, asynchronously.
  - A lease that cannot be revoked (server down at the end of the run) ends at its TTL; keep
    O(ttl) short.
seealso:
  - plugin: aegis.fleet.vault_lease_revoke
    plugin_type: callback
"""

EXAMPLES = r"""
- name: Lease a database login for this run
  ansible.builtin.set_fact:
    app_db: "{{ lookup('aegis.fleet.vault_lease', 'database/creds/app', ttl=600) }}"
  no_log: true

- name: Use it as a module argument (the login is dropped when the run ends)
  community.postgresql.postgresql_query:
    login_host: db.internal
    login_user: "{{ app_db.username }}"
    login_password: "{{ app_db.password }}"
    db: app
    query: SELECT 1
  no_log: true

- name: Or on a command's stdin, never in its environment
  ansible.builtin.command:
    argv: [/usr/local/bin/app-migrate, --credentials-on-stdin]
    stdin: "{{ app_db | to_json }}"
  changed_when: false
  no_log: true

- name: One field of a KV v2 secret, with the server and CA given explicitly
  ansible.builtin.set_fact:
    api_key: >-
      {{ lookup('aegis.fleet.vault_lease', 'secret/data/app', field='api_key',
                url='https://vault.internal:8200', ca_cert='/etc/aegis/vault-ca.pem',
                token_file='~/.vault-token') }}
  no_log: true
"""

RETURN = r"""
_raw:
  description:
    - One element per term, in order; the secret's data (a mapping, for example C(username)
      and C(password) of a database credential), or the value of O(field). Marked unsafe.
  type: list
  elements: raw
"""

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase
from ansible.utils.display import Display
from ansible.utils.unsafe_proxy import wrap_var

from ansible_collections.aegis.fleet.plugins.plugin_utils.vault_lease import (
    LeaseError,
    checked_url,
    revoke,
    start_keeper,
)

try:
    import hvac
    import requests

    HAS_HVAC = True
except ImportError:
    HAS_HVAC = False

display = Display()


class LookupModule(LookupBase):

    def _token(self):
        token = self.get_option("token")
        if token:
            return token.strip()
        path = self.get_option("token_file")
        if not path:
            raise AnsibleError("aegis.fleet.vault_lease: no Vault token: set the token or "
                               "token_file option, or VAULT_TOKEN/BAO_TOKEN")
        try:
            with open(path) as fh:
                token = fh.read().strip()
        except (IOError, OSError) as e:
            raise AnsibleError("aegis.fleet.vault_lease: cannot read token_file %s (%s): "
                               "give a readable file holding the token" % (path, e.strerror)) from None
        if not token:
            raise AnsibleError("aegis.fleet.vault_lease: token_file %s is empty" % path)
        return token

    def _read(self, client, url, path):
        where = "%s at %s" % (path, url)
        try:
            resp = client.read(path)
        except requests.exceptions.SSLError as e:
            raise AnsibleError("aegis.fleet.vault_lease: TLS verification of %s failed (%s): "
                               "set ca_cert (or VAULT_CACERT) to the server's CA" % (url, e)) from None
        except requests.exceptions.RequestException as e:
            raise AnsibleError("aegis.fleet.vault_lease: cannot reach Vault at %s (%s): check "
                               "url (or VAULT_ADDR/BAO_ADDR) and that the server runs"
                               % (url, type(e).__name__)) from None
        except hvac.exceptions.Forbidden:
            raise AnsibleError("aegis.fleet.vault_lease: permission denied reading %s: the "
                               "token is invalid or expired, or its policy does not allow "
                               "read on %s" % (where, path)) from None
        except hvac.exceptions.VaultDown:
            raise AnsibleError("aegis.fleet.vault_lease: Vault at %s is sealed: unseal it"
                               % url) from None
        except (hvac.exceptions.InvalidPath, hvac.exceptions.InvalidRequest) as e:
            raise AnsibleError("aegis.fleet.vault_lease: cannot read %s: %s: check the "
                               "path (mount and role names)" % (where, "; ".join(e.errors or []))) from None
        except hvac.exceptions.VaultError as e:
            raise AnsibleError("aegis.fleet.vault_lease: reading %s failed: %s"
                               % (where, "; ".join(e.errors or [type(e).__name__]))) from None
        if not resp:
            raise AnsibleError("aegis.fleet.vault_lease: nothing at %s: check the path "
                               "(mount and role names; KV v2 paths read <mount>/data/<name>)"
                               % where)
        return resp

    def _value(self, resp, path):
        data = resp.get("data") or {}
        if isinstance(data.get("data"), dict) and "metadata" in data:  # KV v2
            data = data["data"]
        field = self.get_option("field")
        if field is None:
            return data
        if field not in data:
            raise AnsibleError("aegis.fleet.vault_lease: the secret at %s has no field %r "
                               "(fields: %s)" % (path, field, ", ".join(sorted(data)) or "none"))
        return data[field]

    def run(self, terms, variables=None, **kwargs):
        if not HAS_HVAC:
            raise AnsibleError("aegis.fleet.vault_lease needs the hvac Python library on the "
                               "control node: pip install hvac")
        self.set_options(var_options=variables, direct=kwargs)
        try:
            url = checked_url(self.get_option("url") or "", "Vault url")
        except LeaseError as e:
            raise AnsibleError("aegis.fleet.vault_lease: %s (option url, or VAULT_ADDR/"
                               "BAO_ADDR)" % e) from None
        token = self._token()
        ca_cert = self.get_option("ca_cert")
        client = hvac.Client(url=url, token=token, verify=ca_cert or True,
                             timeout=self.get_option("timeout"))
        results = []
        for term in terms:
            path = str(term).strip("/")
            resp = self._read(client, url, path)
            value = self._value(resp, path)
            lease_id = resp.get("lease_id")
            if lease_id:
                self._keep(client, url, token, ca_cert, resp, lease_id)
            else:
                display.vvv("aegis.fleet.vault_lease: read %s (no lease)" % path)
            results.append(wrap_var(value))
        return results

    def _keep(self, client, url, token, ca_cert, resp, lease_id):
        duration = resp.get("lease_duration") or 0
        try:
            ttl = self.get_option("ttl")
            if ttl:
                duration = client.sys.renew_lease(lease_id, increment=ttl)["lease_duration"]
            keeper = start_keeper(url, token, lease_id, ca_cert, duration)
        except Exception as e:
            # never leave a lease nobody will revoke
            try:
                revoke(url, token, lease_id, ca_cert)
            except Exception:
                display.warning("aegis.fleet.vault_lease: could not revoke %s either; it ends "
                                "at its TTL" % lease_id)
            raise AnsibleError("aegis.fleet.vault_lease: cannot keep lease %s (%s: %s); it "
                               "was revoked" % (lease_id, type(e).__name__, e)) from None
        display.vvv("aegis.fleet.vault_lease: leased %s for %d s (keeper pid %d, revoked at "
                    "the end of the run)" % (lease_id, duration, keeper))
