"""What the segmentation filter must never cut, and the timed confirmation of its policy.

    peers = controller_peers("https://10.0.0.5:8443", ipv6="deny")   # [10.0.0.5 tcp/8443]
    seg.protect(peers)       # no management list, order or rule can leave them out

The controller the agent reports to is the one way back into a node that a filter locked
out (a quarantine is released by a signed order), so the agent keeps it reachable itself
and refuses to apply a filter when it cannot tell where the controller is.

Timed confirmation (``segment.confirm_seconds``) is the agent's side of the nftables
rollback guard: the policy applied at start that differs from the one before is
*unconfirmed*; unless ``aegis-agent confirm`` comes before the deadline, the agent puts
the previous policy back (or detaches a filter it had just attached). The deadline and the
previous policy are kept in a file on tmpfs next to the control socket, so an agent that
dies or restarts inside the window still goes back to the last confirmed policy.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .bpf.edges import Peer
from .bpf.layout import MAP_SEG_CONFIG, MAP_SEG_EDGES, MAP_SEG_EDGES_LPM, MAP_SEG_MGMT

Snapshot = dict[str, dict[bytes, bytes]]


class LockoutError(ValueError):
    """Applying the filter could cut the agent off its controller: it is not applied."""


def controller_peers(url: str, ipv6: str = "deny") -> list[Peer]:
    """The controller's addresses and port as management peers (``tcp/PORT`` only).

    The host is resolved now, from the node; a name that does not resolve, or resolves
    to IPv6 only while the filter does not allow IPv6, raises LockoutError."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 443
    if not host:
        raise LockoutError(f"the controller url {url!r} names no host")
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise LockoutError(
            f"cannot resolve the controller's host {host!r} ({e.strerror}): a default-drop "
            "filter could cut the agent off its controller, so it is not applied; fix name "
            "resolution or write the controller's address in controller.url") from None
    v4 = sorted({str(i[4][0]) for i in infos if i[0] == socket.AF_INET})
    if not v4 and ipv6 != "allow":
        raise LockoutError(
            f"the controller's host {host!r} has no IPv4 address and the filter's ipv6 "
            f"policy is {ipv6!r}: the filter would cut the controller, so it is not applied "
            "(give the controller an IPv4 address, or set segment.ipv6: allow)")
    return [Peer.parse(f"{a} tcp/{port}") for a in v4]


def same_policy(a: Snapshot, b: Snapshot) -> bool:
    """Whether two snapshots hold the same policy: config and management peers alike, and
    the same edges (their last-seen times move with traffic, so only the keys count)."""
    return (all(a[n] == b[n] for n in (MAP_SEG_CONFIG, MAP_SEG_MGMT))
            and all(a[n].keys() == b[n].keys() for n in (MAP_SEG_EDGES, MAP_SEG_EDGES_LPM)))


@dataclass(frozen=True)
class Unconfirmed:
    """A policy applied but not confirmed: when it is reverted (wall clock) and to what
    (``None``: the filter was not attached before, so reverting detaches it)."""

    deadline: float
    previous: Snapshot | None

    def save(self, path: Path) -> None:
        prev = None if self.previous is None else {
            name: {k.hex(): v.hex() for k, v in rows.items()}
            for name, rows in self.previous.items()}
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"deadline": self.deadline, "previous": prev}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Unconfirmed | None:
        """The unconfirmed policy a previous run of the agent left, or None."""
        try:
            data = json.loads(path.read_text())
            prev = data["previous"]
            return cls(float(data["deadline"]), None if prev is None else {
                name: {bytes.fromhex(k): bytes.fromhex(v) for k, v in rows.items()}
                for name, rows in prev.items()})
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError):
            # unreadable: what to go back to is unknown, so the safe side is no filter
            return cls(0.0, None)

    @staticmethod
    def clear(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
