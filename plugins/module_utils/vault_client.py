# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The aegis.fleet.vault_* modules' one way to reach a Vault-compatible server (OpenBao,
Vault) through hvac: connection options, a health gate run before anything changes
(reachable, initialized, unsealed, token valid), hvac's errors turned into messages that
say what to fix (never carrying the token), and the normalizations the modules compare
with (durations in seconds, CIDRs as the server stores them)."""

from __future__ import annotations

import ipaddress
import re
import traceback
from urllib.parse import urlsplit

from ansible.module_utils.basic import env_fallback, missing_required_lib

try:
    import hvac
    import requests
    from hvac import exceptions as hvac_errors
except ImportError:
    HAS_HVAC = False
    HVAC_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_HVAC = True
    HVAC_IMPORT_ERROR = None

CONNECTION_SPEC = dict(
    url=dict(type="str", fallback=(env_fallback, ["BAO_ADDR", "VAULT_ADDR"])),
    token=dict(type="str", no_log=True, fallback=(env_fallback, ["BAO_TOKEN", "VAULT_TOKEN"])),
    ca_cert=dict(type="path", fallback=(env_fallback, ["BAO_CACERT", "VAULT_CACERT"])),
    timeout=dict(type="int", default=10),
)

_LOOPBACK_NAMES = ("localhost",)
_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def argument_spec(**options):
    """The module's own options plus the connection options."""
    spec = dict(CONNECTION_SPEC)
    spec.update(options)
    return spec


def seconds(value, name="a duration"):
    """A duration (``90``, ``"90s"``, ``"15m"``, ``"1h30m"``, ``"7d"``) in seconds."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError("%s: %r is not a duration (use seconds or e.g. 90s, 15m, 1h, 7d)"
                         % (name, value))
    return sum(int(n) * _UNIT[u] for n, u in parts)


def cidrs(values, name="a CIDR list"):
    """CIDR blocks in one spelling (a single address as /32 or /128), sorted: the server
    reads a bound address back without its prefix length but accepts only CIDRs in some
    fields (secret_id_bound_cidrs)."""
    out = []
    for value in values or []:
        try:
            net = ipaddress.ip_network(str(value).strip(), strict=False)
        except ValueError:
            raise ValueError("%s: %r is not an IP address or CIDR block" % (name, value)) from None
        out.append(str(net))
    return sorted(set(out))


def _is_loopback(host):
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class VaultFailure(Exception):
    """A refusal or failure of the server, with a message that says what to fix."""


def describe(err, action):
    """One line for an hvac/requests error while doing ``action`` (no token in it)."""
    if HAS_HVAC and isinstance(err, hvac_errors.Forbidden):
        return ("%s: permission denied (403): the token may not do this; use a token whose "
                "policy allows it" % action)
    if HAS_HVAC and isinstance(err, hvac_errors.VaultDown):
        return "%s: the server is sealed or down (503): unseal it (bao operator unseal)" % action
    if HAS_HVAC and isinstance(err, hvac_errors.VaultError):
        errors = getattr(err, "errors", None) or [str(err)]
        text = "; ".join(str(e).split(", on ", maxsplit=1)[0] for e in errors)
        return "%s: the server refused it: %s" % (action, text)
    if HAS_HVAC and isinstance(err, requests.exceptions.RequestException):
        return "%s: cannot reach the server: %s" % (action, type(err).__name__)
    return "%s: %s" % (action, err)


class Vault:
    """A checked connection: construct it with the module (fails the module on any
    problem), then ``read``/``write``/``list``/``delete`` by API path."""

    def __init__(self, module):
        self.module = module
        if not HAS_HVAC:
            module.fail_json(msg=missing_required_lib("hvac"), exception=HVAC_IMPORT_ERROR)
        params = module.params
        url = (params.get("url") or "").rstrip("/")
        if not url:
            module.fail_json(msg="no Vault address: set the url option (or BAO_ADDR / VAULT_ADDR)")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            module.fail_json(msg="url %r is not an http(s):// address of a Vault server" % url)
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            module.fail_json(msg="url %s: plain http is allowed for loopback only; use https://"
                             % url)
        if not params.get("token"):
            module.fail_json(msg="no Vault token: set the token option (or BAO_TOKEN / VAULT_TOKEN)")
        self.url = url
        self.client = hvac.Client(url=url, token=params["token"],
                                  verify=params.get("ca_cert") or True,
                                  timeout=params.get("timeout") or 10)
        self._health()

    def fail(self, msg, **kwargs):
        self.module.fail_json(msg=msg, **kwargs)

    def _health(self):
        try:
            health = self.client.sys.read_health_status(method="GET")
        except Exception as err:
            if HAS_HVAC and isinstance(err, requests.exceptions.RequestException):
                self.fail("cannot reach the Vault server at %s (%s): check the url option and "
                          "that the server is running" % (self.url, type(err).__name__))
            self.fail(describe(err, "health check of %s" % self.url))
        if not isinstance(health, dict):  # hvac hands back the response on odd status codes
            try:
                health = health.json()
            except ValueError:
                self.fail("%s did not answer like a Vault server (sys/health)" % self.url)
        if not health.get("initialized", False):
            self.fail("the Vault server at %s is not initialized: run bao operator init" % self.url)
        if health.get("sealed", False):
            self.fail("the Vault server at %s is sealed: unseal it (bao operator unseal) and run "
                      "again; nothing was changed" % self.url)
        try:
            self.client.lookup_token()
        except Exception as err:
            if HAS_HVAC and isinstance(err, hvac_errors.Forbidden):
                self.fail("the token was refused by %s (403): it is unknown, expired or "
                          "revoked; give a valid token" % self.url)
            self.fail(describe(err, "token lookup at %s" % self.url))
        self.version = health.get("version", "")

    def _call(self, action, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            self.fail(describe(err, action))

    def answer_or_none(self, action, fn, *args, none_on=(), **kwargs):
        """``fn(*args, **kwargs)``; None when the server refuses with one of the hvac error
        classes named in ``none_on`` (e.g. ``"InvalidRequest"``), else the module fails."""
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # every failure becomes None or one message
            if HAS_HVAC and isinstance(err, tuple(getattr(hvac_errors, n) for n in none_on)):
                return None
            self.fail(describe(err, action))

    def read(self, path):
        """The ``data`` of ``path``, or None when it does not exist (404)."""
        try:
            answer = self.client.read(path)
        except Exception as err:
            if HAS_HVAC and isinstance(err, hvac_errors.InvalidPath):
                return None
            self.fail(describe(err, "read %s" % path))
        return (answer or {}).get("data") if isinstance(answer, dict) else None

    def list(self, path):
        """The keys under ``path`` (empty when there are none)."""
        try:
            answer = self.client.list(path)
        except Exception as err:
            if HAS_HVAC and isinstance(err, hvac_errors.InvalidPath):
                return []
            self.fail(describe(err, "list %s" % path))
        return ((answer or {}).get("data") or {}).get("keys") or []

    def write(self, path, data):
        """Write ``data`` to ``path``; the server's answer (None for 204)."""
        answer = self._call("write %s" % path, self.client.write_data, path, data=data)
        return answer if isinstance(answer, dict) else None

    def delete(self, path):
        self._call("delete %s" % path, self.client.delete, path)

    def mounted(self, path, kind="secret"):
        """The mount at ``path`` (``sys/mounts`` or, for ``kind="auth"``, ``sys/auth``)."""
        base = "sys/mounts" if kind == "secret" else "sys/auth"
        return (self.read(base) or {}).get(path.strip("/") + "/")

    def require_mount(self, path, engine, kind="secret"):
        """Fail unless ``engine`` is mounted at ``path``; True when it is. In check mode a
        missing mount is not an error (an earlier task of the run would create it): False."""
        mount = self.mounted(path, kind)
        if mount and mount.get("type") == engine:
            return True
        if mount is None and self.module.check_mode:
            return False
        where = ("auth/%s" if kind == "auth" else "%s") % path.strip("/")
        self.fail("%s at %s: mount one first (aegis.fleet.vault_mount engine=%s%s)"
                  % ("a %s mount, not %s, is" % (mount.get("type"), engine) if mount
                     else "no %s engine is mounted" % engine, where, engine,
                     " kind=auth" if kind == "auth" else ""))
        return False

    def missing_policies(self, names):
        """The names in ``names`` that are no ACL policy on the server."""
        known = set(self.list("sys/policies/acl")) | {"root", "default"}
        return [n for n in names if n not in known]

    def require_policies(self, names, option):
        """Fail naming the policies in ``names`` that do not exist; in check mode only warn,
        as a task before this one in the same check-mode run may be what creates them."""
        missing = self.missing_policies(names)
        if missing and self.module.check_mode:
            self.module.warn("%s names policies that do not exist yet: %s (the run fails "
                             "unless an earlier task creates them)" % (option, ", ".join(missing)))
        elif missing:
            self.fail("%s names policies that do not exist on %s: %s; create them first "
                      "(aegis.fleet.vault_policy) or remove them from %s"
                      % (option, self.url, ", ".join(missing), option))


def durations(module, names):
    """The module's duration options in seconds; fails the module naming a bad one."""
    out = {}
    for name in names:
        try:
            out[name] = seconds(module.params.get(name), name)
        except ValueError as err:
            module.fail_json(msg=str(err))
    return out


def as_text(state):
    """A state dict as the text the modules diff (empty for an object that does not exist)."""
    import json

    return "" if state is None else json.dumps(state, indent=2, sort_keys=True) + "\n"
