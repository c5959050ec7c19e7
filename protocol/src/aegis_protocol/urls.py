"""Service URLs (the controller's, a Vault-compatible server's): ``https://``, or plain
``http://`` only on loopback, where nothing crosses a network. One check, used by the
agent's configuration and the controller's Vault settings alike."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_url(url: str, what: str) -> str:
    """``url`` if it is ``https://HOST…``, or ``http://`` to a loopback host; else a
    ``ValueError`` naming ``what``, the URL and the fix."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        host, parts = "", None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"{what} {url!r} is not a URL: give https://HOST[:PORT]")
    if parts.scheme == "http" and not is_loopback(host):
        raise ValueError(f"{what} {url!r} is plain http to {host}, which is not loopback: "
                         "use https:// (plain http is allowed only to 127.0.0.1, ::1 or "
                         "localhost)")
    return url
