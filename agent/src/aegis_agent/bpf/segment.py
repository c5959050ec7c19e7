"""Micro-segmentation on one interface: default-drop XDP ingress, tc/tcx egress.

    seg = SegmentFilter("eth0", PIN_ROOT / "segment")
    info = seg.attach()            # AttachInfo: xdp native/generic, tcx/clsact
    seg.grant("10.0.0.0/24 -> 192.0.2.2 tcp/22", ttl=3600, idle=600)
    seg.quarantine(True, management=["192.0.2.10 tcp/22"])
    seg.detach()                   # every link, program and pin it made

Everything lives under one pin directory: maps, programs and links. A new process
that builds a SegmentFilter on the same directory re-opens them, so enforcement stays
in place across agent restarts, and the policy it finds (mode, quarantine, edges) is
kept: constructor policy arguments only seed a fresh load. The pinned-object lifecycle
(load, reopen with every map checked, close, unpin) is ``pinned.PinnedObject``'s; this
module keeps the filter's verbs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

from . import layout, libbpf, syscall
from .bpffs import PIN_ROOT, ensure_bpffs
from .edges import Edge, EdgeSpecError, Peer
from .fqdn import FqdnPolicies
from .layout import (
    MAP_SEG_ATTACH,
    MAP_SEG_CONFIG,
    MAP_SEG_COUNTERS,
    MAP_SEG_EDGES,
    MAP_SEG_EDGES_LPM,
    MAP_SEG_EVENTS,
    MAP_SEG_FLOWS,
    MAP_SEG_MGMT,
    MAP_SEG_MGMT_NETS,
    AttachState,
    Config,
    DropRecord,
    Verdict,
)
from .pin_migration import read_old_pins
from .pinned import PinMismatchError, PinnedObject
from .policy_edges import LabelPolicies
from .syscall import BpfError

log = logging.getLogger(__name__)

PROGRAMS = {"ingress": layout.PROG_SEG_INGRESS, "egress": layout.PROG_SEG_EGRESS}
LINK_PINS = ("link_xdp", "link_tc")
POLICY_MAPS = (MAP_SEG_CONFIG, MAP_SEG_MGMT, MAP_SEG_MGMT_NETS, MAP_SEG_EDGES,
               MAP_SEG_EDGES_LPM)
#: the controller's label policies: carried over a migration (their counters restart)
LABEL_POLICY_MAPS = (layout.MAP_SEG_POLICIES, layout.MAP_SEG_POL_EDGES, layout.MAP_SEG_FQDN,
                     layout.MAP_SEG_FQDN_RULES)
_ONE = (1).to_bytes(4, "little")
XDP_PASS, XDP_DROP = 2, 1
TC_ACT_OK, TC_ACT_SHOT = 0, 2
_XDP_FLAGS = {"native": syscall.XDP_FLAGS_DRV_MODE, "generic": syscall.XDP_FLAGS_SKB_MODE}


class AttachError(BpfError):
    """The filter could not be attached as asked (never silently downgraded)."""


@dataclass(frozen=True)
class AttachInfo:
    iface: str | None
    ifindex: int
    xdp_mode: str  # native | generic
    tc_mode: str  # tcx | clsact
    reused: bool  # found attached in the pin directory (e.g. after a restart)
    downgraded: str | None = None  # set only when an 'auto' mode fell back, with the reason

    def __str__(self) -> str:
        s = f"{self.iface or self.ifindex}: ingress xdp/{self.xdp_mode}, egress {self.tc_mode}"
        return s + (f" (downgraded: {self.downgraded})" if self.downgraded else "")


@dataclass(frozen=True)
class EdgeState:
    edge: Edge
    expires_ns: int
    idle_ns: int
    last_seen_ns: int
    granted_ns: int

    @property
    def used(self) -> bool:
        """A packet passed since the edge was granted (the filter moves ``last_seen``, set
        a millisecond before the grant's time, on to a packet's time when it is at least a
        millisecond old)."""
        return self.last_seen_ns > self.granted_ns

    def state(self, now_ns: int | None = None) -> str:
        now = time.monotonic_ns() if now_ns is None else now_ns
        if self.expires_ns and now >= self.expires_ns:
            return "expired"
        if self.idle_ns and now > self.last_seen_ns and now - self.last_seen_ns > self.idle_ns:
            return "idle"
        return "active"


def _choice(value: str, allowed: Iterable[str], what: str) -> str:
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"bad {what} {value!r}: use one of {', '.join(allowed)}")
    return value


def _seconds_to_ns(value: float | None, what: str) -> int:
    if value is None:
        return 0
    if not value > 0:
        raise ValueError(f"bad {what} {value!r}: give a positive number of seconds, or None "
                         "for no limit")
    return int(value * 1e9)


def _edge_map(e: Edge) -> str:
    return MAP_SEG_EDGES_LPM if e.in_lpm else MAP_SEG_EDGES


def _nets_of(mgmt_rows: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """seg_mgmt_nets rows for seg_mgmt rows (a snapshot or pins from before the map)."""
    size = layout.MGMT_KEY.size
    out = {}
    for key in mgmt_rows:
        (plen,) = layout.MGMT_KEY.unpack(key[:size])
        _proto, _port, peer = layout.MGMT_DATA.unpack(key[size:])
        out[layout.MGMT_NET_KEY.pack(plen - layout.MGMT_EXACT_BITS)
            + layout.MGMT_NET_DATA.pack(peer)] = _ONE
    return out


def _netns_ino() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


class SegmentFilter(PinnedObject):
    """Default-drop segmentation on ``iface`` with every object pinned in ``pin_dir``."""

    OBJECT = "segment"
    MAPS = layout.SEGMENT_MAPS
    PROGRAMS = layout.SEGMENT_PROGRAMS
    RING = MAP_SEG_EVENTS

    def __init__(self, iface: str | None = None, pin_dir: str | os.PathLike = PIN_ROOT / "segment",
                 *, object_file: str | os.PathLike | None = None, xdp_mode: str = "native",
                 tc_mode: str = "tcx", mode: str = "enforce", arp: str = "allow",
                 ipv6: str = "deny", flow_timeout: float = 300.0, event_rate: float = 1000.0,
                 event_burst: int = 100) -> None:
        super().__init__(pin_dir, object_file)
        self.iface = iface
        self.xdp_mode = _choice(xdp_mode, ["native", "generic", "auto"], "xdp_mode")
        self.tc_mode = _choice(tc_mode, ["tcx", "clsact", "auto"], "tc_mode")
        if event_rate < 0 or event_burst < 1:
            raise ValueError("event_rate must be >= 0 (0: unlimited) and event_burst >= 1")
        cost = int(1e9 / event_rate) if event_rate else 0
        self._seed = Config(
            mode=layout.MODES[_choice(mode, layout.MODES, "mode")],
            arp=layout.ARP_POLICIES[_choice(arp, layout.ARP_POLICIES, "arp policy")],
            ipv6=layout.IPV6_POLICIES[_choice(ipv6, layout.IPV6_POLICIES, "ipv6 policy")],
            flow_timeout_ns=_seconds_to_ns(flow_timeout, "flow_timeout"),
            event_cost_ns=cost, event_burst_ns=cost * event_burst)

    # -- lifecycle ---------------------------------------------------------------------
    def _pin(self, name: str) -> str:
        return str(self.pin(name))

    def load(self, skip: tuple[str, ...] = ()) -> bool:
        """Load the object and pin maps and programs (no attach). Returns False when they
        were already pinned (re-opened instead)."""
        ensure_bpffs(self.pin_dir)
        if self.is_open:
            return False
        if self.loaded:
            try:
                self.open()
            except BpfError as e:
                if not isinstance(e, PinMismatchError) and e.errno != errno.ENOENT:
                    raise
                self._migrate(str(e), skip)
            return False
        self._load_fresh(self._seed, skip)
        return True

    def _load_fresh(self, cfg: Config, skip: tuple[str, ...]) -> None:
        super().load(skip)
        try:
            self._write_config(cfg)
        except BaseException:
            self.close()
            self.remove()
            raise

    def _migrate(self, why: str, skip: tuple[str, ...]) -> None:
        """Pins from an older build (a map of another size, or one it did not have):
        recreate them with this build, carrying the policy over (config, management
        peers, edges with their times, the node's own flows, the label policies), and move
        the links over.
        The new object is loaded and filled in a staging directory first, so the
        interface is without a filter only between the old links' detach and the new
        attach (milliseconds); counters restart at zero."""
        old = read_old_pins(self.pin_dir, self.MAPS,
                            carry=[*POLICY_MAPS[1:], MAP_SEG_FLOWS, *LABEL_POLICY_MAPS])
        state = old.attach
        attached = bool(state.ifindex) and self._links_alive(state)
        if attached and state.netns_ino and state.netns_ino != _netns_ino():
            raise AttachError(0, f"the pins in {self.pin_dir} come from an older build and "
                                 "their links live in another network namespace: run the "
                                 "agent there (e.g. nsenter --net=/run/netns/NAME) to "
                                 f"migrate them ({why})")
        log.warning("segment pins in %s come from an older build (%s): recreating them "
                    "with this build and carrying the policy over%s", self.pin_dir, why,
                    f"; not carried: {', '.join(old.left_behind)}" if old.left_behind else "")
        t0 = time.monotonic()
        # (bpffs refuses names with a dot)
        staging = SegmentFilter(self.iface, self.pin_dir.with_name(self.pin_dir.name + "-new"),
                                object_file=self.object_file)
        staging.remove()  # what an interrupted migration left
        staging._load_fresh(old.config, skip)
        try:
            staging._write_rows(old.rows)
            t1 = time.monotonic()
            if attached and state.tc_mode == 1:
                moved, gap = self._move_links(staging, state), 0.0
            else:  # clsact filters are no links: detach, then attach anew
                problems = self._detach_links(state)
                if problems:
                    raise AttachError(0, f"migrating {self.pin_dir}: the old links could "
                                         f"not be removed: {'; '.join(problems)}")
                if attached:
                    staging._reattach(state)
                moved, gap = False, time.monotonic() - t1
        except BaseException:
            staging.detach()
            raise
        self.close()
        self.remove()
        staging.close()
        os.rename(staging.pin_dir, self.pin_dir)
        self.open()
        log.warning("segment pins in %s recreated in %.0f ms (%s)", self.pin_dir,
                    (time.monotonic() - t0) * 1000,
                    "the links now run this build's programs (swapped in place, no gap)"
                    if moved else f"links re-made, {gap * 1000:.1f} ms without a filter"
                    if attached else "nothing was attached")

    def _move_links(self, staging: SegmentFilter, state: AttachState) -> bool:
        """Point the live XDP and tcx links at ``staging``'s programs (BPF_LINK_UPDATE:
        each swap is atomic) and pin them there, with the attach state."""
        for name, prog in (("link_tc", PROGRAMS["egress"]), ("link_xdp", PROGRAMS["ingress"])):
            fd = syscall.obj_get(self._pin(name))
            try:
                syscall.link_update(fd, staging.prog_fd(prog))
                syscall.obj_pin(fd, staging._pin(name))
            finally:
                os.close(fd)
        staging._write_attach_state(state)
        for name in LINK_PINS:  # the old directory's pins of the (now moved) links
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._pin(name))
        return True

    def _write_rows(self, rows: dict[str, dict[bytes, bytes]]) -> None:
        """Write carried-over map rows in batches (management networks first)."""
        rows = dict(rows)
        if MAP_SEG_MGMT in rows and MAP_SEG_MGMT_NETS not in rows:
            rows[MAP_SEG_MGMT_NETS] = _nets_of(rows[MAP_SEG_MGMT])
        for name in (MAP_SEG_MGMT_NETS, *[n for n in rows if n != MAP_SEG_MGMT_NETS]):
            keys, values = list(rows.get(name, {})), list(rows.get(name, {}).values())
            for i in range(0, len(keys), 8192):
                syscall.map_update_batch(self.map_fd(name), b"".join(keys[i:i + 8192]),
                                         b"".join(values[i:i + 8192]), len(keys[i:i + 8192]))

    def _reattach(self, old: AttachState) -> None:
        """Attach to ``old``'s interface with the modes the old links had."""
        state = AttachState(ifindex=old.ifindex, attached_ns=time.monotonic_ns(),
                            netns_ino=_netns_ino())
        wanted = (self.xdp_mode, self.tc_mode)
        self.xdp_mode = layout.XDP_MODES.get(old.xdp_mode, "auto")
        self.tc_mode = layout.TC_MODES.get(old.tc_mode, "auto")
        if self.xdp_mode == "none":
            self.xdp_mode = "auto"
        if self.tc_mode == "none":
            self.tc_mode = "auto"
        try:
            self._attach_tc(state)
            self._attach_xdp(state)
        except BaseException:
            self._detach_links(state)
            raise
        finally:
            self.xdp_mode, self.tc_mode = wanted

    def _ifindex(self) -> int:
        if not self.iface:
            raise AttachError(0, "no interface given: SegmentFilter(iface=...) to attach")
        try:
            return socket.if_nametoindex(self.iface)
        except OSError as e:
            raise AttachError(e.errno or 19, f"interface {self.iface!r} not found in this "
                                             "network namespace; run the agent inside the "
                                             "namespace that owns it") from e

    def attach(self) -> AttachInfo:
        """Load, pin and attach (ingress XDP, egress tcx/clsact). When the pin directory
        already holds live links, re-opens them and reports what it found."""
        if not self.loaded:
            self._ifindex()  # a wrong interface fails before anything is pinned
        self.load()
        state = self._attach_state()
        if state.ifindex:
            if self._links_alive(state):
                return self._info(state, reused=True)
            log.warning("pinned links in %s are dead (interface or namespace gone); "
                        "re-attaching", self.pin_dir)
            self._detach_links(state)
        ifindex = self._ifindex()
        state = AttachState(ifindex=ifindex, attached_ns=time.monotonic_ns(),
                            netns_ino=_netns_ino())
        downgraded = []
        try:
            tc_mode, why = self._attach_tc(state)
            downgraded += [why] if why else []
            xdp_mode, why = self._attach_xdp(state)
            downgraded += [why] if why else []
        except BaseException:
            self._detach_links(state)
            raise
        for w in downgraded:
            log.warning("segment filter on %s: %s", self.iface, w)
        info = self._info(state, reused=False, downgraded="; ".join(downgraded) or None)
        log.info("segment filter attached: %s (xdp %s, %s)", info, xdp_mode, tc_mode)
        return info

    def _attach_xdp(self, state: AttachState) -> tuple[str, str | None]:
        prog = self.prog_fd(PROGRAMS["ingress"])
        order = ["native", "generic"] if self.xdp_mode == "auto" else [self.xdp_mode]
        errors = []
        for mode in order:
            try:
                fd = syscall.link_create(prog, state.ifindex, syscall.ATTACH_XDP,
                                         _XDP_FLAGS[mode])
            except BpfError as e:
                errors.append(f"xdp {mode}: {e.strerror or e}")
                continue
            try:
                syscall.obj_pin(fd, self._pin("link_xdp"))
            finally:
                os.close(fd)
            state.xdp_mode = 1 if mode == "native" else 2
            self._write_attach_state(state)
            why = (f"xdp native refused ({errors[0]}), using generic"
                   if errors and mode == "generic" else None)
            return mode, why
        raise AttachError(0, f"cannot attach XDP to {self.iface}: {'; '.join(errors)}"
                             + ("" if self.xdp_mode == "auto" else
                                " (xdp_mode='auto' allows a reported fallback to generic)"))

    def _attach_tc(self, state: AttachState) -> tuple[str, str | None]:
        prog = self.prog_fd(PROGRAMS["egress"])
        errors = []
        if self.tc_mode in ("tcx", "auto"):
            try:
                fd = syscall.link_create(prog, state.ifindex, syscall.ATTACH_TCX_EGRESS)
            except BpfError as e:
                errors.append(f"tcx: {e.strerror or e}")
            else:
                try:
                    syscall.obj_pin(fd, self._pin("link_tc"))
                finally:
                    os.close(fd)
                state.tc_mode = 1
                self._write_attach_state(state)
                return "tcx", None
        if self.tc_mode in ("clsact", "auto"):
            try:
                handle, prio, created = libbpf.tc_attach(state.ifindex, prog,
                                                         libbpf.BPF_TC_EGRESS)
            except BpfError as e:
                errors.append(f"clsact: {e}")
            else:
                state.tc_mode, state.tc_handle, state.tc_priority = 2, handle, prio
                state.tc_hook_created = int(created)
                self._write_attach_state(state)
                return "clsact", (f"tcx refused ({errors[0]}), using clsact" if errors
                                  else None)
        raise AttachError(0, f"cannot attach the egress program to {self.iface}: "
                             f"{'; '.join(errors)}"
                             + ("" if self.tc_mode == "auto" else
                                " (tc_mode='auto' allows a reported fallback to clsact)"))

    def _links_alive(self, state: AttachState) -> bool:
        for name in ("link_xdp", "link_tc") if state.tc_mode == 1 else ("link_xdp",):
            try:
                fd = syscall.obj_get(self._pin(name))
            except BpfError:
                return False
            try:
                if not syscall.link_info(fd).ifindex:
                    return False
            finally:
                os.close(fd)
        return state.tc_mode != 0

    def _info(self, state: AttachState, reused: bool, downgraded: str | None = None) -> AttachInfo:
        return AttachInfo(self.iface, state.ifindex, layout.XDP_MODES[state.xdp_mode],
                          layout.TC_MODES[state.tc_mode], reused, downgraded)

    def attach_info(self) -> AttachInfo | None:
        """What is attached according to the pins, or None."""
        if not self.is_open and not self.loaded:
            return None
        self.load()
        state = self._attach_state()
        if not state.ifindex or not self._links_alive(state):
            return None
        return self._info(state, reused=True)

    def _detach_links(self, state: AttachState) -> list[str]:
        problems = []
        for name in LINK_PINS:
            path = self._pin(name)
            if not os.path.exists(path):
                continue
            try:
                fd = syscall.obj_get(path)
                try:
                    syscall.link_detach(fd)
                except BpfError as e:
                    if e.errno not in (2, 19, 22):  # already detached / device gone
                        problems.append(f"{name}: {e}")
                finally:
                    os.close(fd)
            except BpfError as e:
                problems.append(f"{name}: {e}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if state.tc_mode == 2:
            if state.netns_ino and state.netns_ino != _netns_ino():
                problems.append("the clsact filter was attached in another network namespace; "
                                "run detach there (e.g. nsenter --net=/run/netns/NAME)")
            else:
                try:
                    libbpf.tc_detach(state.ifindex, libbpf.BPF_TC_EGRESS, state.tc_handle,
                                     state.tc_priority, bool(state.tc_hook_created))
                except BpfError as e:
                    problems.append(f"clsact: {e}")
        return problems

    def detach(self) -> None:
        """Remove every link, filter, program and pin this filter made (idempotent)."""
        problems: list[str] = []
        if self.pin_dir.exists():
            state = AttachState()
            if self.loaded:
                with contextlib.suppress(OSError):
                    state = self._attach_state()
            problems += self._detach_links(state)
        self.close()
        if problems:
            raise AttachError(0, f"detach from {self.pin_dir} left work undone: "
                                 f"{'; '.join(problems)}")
        self.remove()

    # -- maps --------------------------------------------------------------------------
    def _attach_state(self) -> AttachState:
        raw = syscall.map_lookup(self.map_fd(MAP_SEG_ATTACH), bytes(4), layout.ATTACH.size)
        return AttachState.unpack(raw or bytes(layout.ATTACH.size))

    def _write_attach_state(self, state: AttachState) -> None:
        syscall.map_update(self.map_fd(MAP_SEG_ATTACH), bytes(4), state.pack())

    def config(self) -> Config:
        raw = syscall.map_lookup(self.map_fd(MAP_SEG_CONFIG), bytes(4), layout.CONFIG.size)
        return Config.unpack(raw or bytes(layout.CONFIG.size))

    def _write_config(self, cfg: Config) -> None:
        syscall.map_update(self.map_fd(MAP_SEG_CONFIG), bytes(4), cfg.pack())

    def set_mode(self, mode: str) -> None:
        """'enforce' drops; 'observe' passes everything and reports would-be drops."""
        cfg = self.config()
        cfg.mode = layout.MODES[_choice(mode, layout.MODES, "mode")]
        self._write_config(cfg)

    def set_policy(self, *, arp: str | None = None, ipv6: str | None = None) -> None:
        """ARP: allow | deny. IPv6: allow | deny | filter (neighbour/router discovery)."""
        cfg = self.config()
        if arp is not None:
            cfg.arp = layout.ARP_POLICIES[_choice(arp, layout.ARP_POLICIES, "arp policy")]
        if ipv6 is not None:
            cfg.ipv6 = layout.IPV6_POLICIES[_choice(ipv6, layout.IPV6_POLICIES, "ipv6 policy")]
        self._write_config(cfg)

    def policy(self) -> dict[str, object]:
        cfg = self.config()
        names = {m: {v: k for k, v in d.items()} for m, d in
                 (("mode", layout.MODES), ("arp", layout.ARP_POLICIES),
                  ("ipv6", layout.IPV6_POLICIES))}
        return {"mode": names["mode"][cfg.mode], "quarantine": bool(cfg.quarantine),
                "arp": names["arp"][cfg.arp], "ipv6": names["ipv6"][cfg.ipv6],
                "management": [str(p) for p in self.management()]}

    def protect(self, peers: Iterable[str | Peer]) -> None:
        """Peers no management list may leave out (the controller the agent reports to):
        installed now and kept by every later ``quarantine(…, management)`` of this
        object, so no order, rule or CLI call can cut them."""
        self.protected = tuple(Peer.parse(p) for p in peers)
        fd, nets = self.map_fd(MAP_SEG_MGMT), self.map_fd(MAP_SEG_MGMT_NETS)
        for p in self.protected:
            syscall.map_update(nets, p.net_key(), _ONE)
            syscall.map_update(fd, p.key(), _ONE)

    protected: tuple[Peer, ...] = ()

    def quarantine(self, on: bool, management: Iterable[str | Peer] | None = None) -> None:
        """Cut everything except ``management`` peers (both directions). None keeps the
        current list; the list (with the ``protected`` peers) is installed before the
        switch flips."""
        peers = None if management is None else [Peer.parse(p) for p in management]
        if peers is not None:
            self._set_management([*peers, *self.protected])
        cfg = self.config()
        cfg.quarantine = int(bool(on))
        self._write_config(cfg)

    def _set_management(self, peers: list[Peer]) -> None:
        """Make seg_mgmt hold exactly ``peers``, and seg_mgmt_nets their networks; the
        networks are added first and removed last, so the pre-check never hides a
        peer that is in seg_mgmt."""
        fd, nets = self.map_fd(MAP_SEG_MGMT), self.map_fd(MAP_SEG_MGMT_NETS)
        want_nets = {p.net_key() for p in peers}
        wanted = {p.key() for p in peers}
        for key in want_nets:
            syscall.map_update(nets, key, _ONE)
        for key in list(syscall.map_keys(fd, layout.SEGMENT_MAPS[MAP_SEG_MGMT].key_size)):
            if key not in wanted:
                syscall.map_delete(fd, key)
        for key in wanted:
            syscall.map_update(fd, key, _ONE)
        for key in list(syscall.map_keys(nets, layout.SEGMENT_MAPS[MAP_SEG_MGMT_NETS].key_size)):
            if key not in want_nets:
                syscall.map_delete(nets, key)

    def management(self) -> list[Peer]:
        fd = self.map_fd(MAP_SEG_MGMT)
        peers = []
        for key in syscall.map_keys(fd, layout.SEGMENT_MAPS[MAP_SEG_MGMT].key_size):
            (plen,) = layout.MGMT_KEY.unpack(key[:layout.MGMT_KEY.size])
            proto, port, peer = layout.MGMT_DATA.unpack(key[layout.MGMT_KEY.size:])
            peers.append(Peer(ipaddress.IPv4Network((peer, plen - layout.MGMT_EXACT_BITS)),
                              proto, port))
        return sorted(peers)

    # -- the policy as a whole (timed confirmation) --------------------------------------
    def snapshot(self) -> dict[str, dict[bytes, bytes]]:
        """The policy: the config, the management peers and the edges as map contents,
        to ``restore`` later (flows, counters and events are not policy)."""
        out: dict[str, dict[bytes, bytes]] = {}
        for name in POLICY_MAPS:
            spec, fd = layout.SEGMENT_MAPS[name], self.map_fd(name)
            rows = {}
            for key in list(syscall.map_keys(fd, spec.key_size)):
                raw = syscall.map_lookup(fd, key, spec.value_size)
                if raw is not None:
                    rows[key] = raw
            out[name] = rows
        return out

    def restore(self, snap: dict[str, dict[bytes, bytes]]) -> None:
        """Put back a ``snapshot``: entries not in it are removed, the others rewritten.
        The quarantine switch stays as it is now: a revert never lifts a quarantine, and
        the ``protected`` peers stay; so do the controller's label policies (not part of
        a snapshot: their switch in the config stays as it is too)."""
        now = self.config()
        quarantined, labelled = now.quarantine, now.flags & layout.CFG_POLICY_FLAGS
        snap = dict(snap)
        if MAP_SEG_MGMT in snap and MAP_SEG_MGMT_NETS not in snap:
            snap[MAP_SEG_MGMT_NETS] = _nets_of(snap[MAP_SEG_MGMT])
        order = [MAP_SEG_MGMT_NETS, *[n for n in snap if n != MAP_SEG_MGMT_NETS]]
        for name in [n for n in order if n in snap]:
            rows = snap[name]
            spec, fd = layout.SEGMENT_MAPS[name], self.map_fd(name)
            if name != MAP_SEG_CONFIG:
                for key in list(syscall.map_keys(fd, spec.key_size)):
                    if key not in rows:
                        syscall.map_delete(fd, key)
            for key, value in rows.items():
                syscall.map_update(fd, key, value)
        cfg = self.config()
        cfg.quarantine = quarantined
        cfg.flags = (cfg.flags & ~layout.CFG_POLICY_FLAGS) | labelled
        self._write_config(cfg)
        if self.protected:  # an earlier policy may predate them: they stay all the same
            self.protect(self.protected)

    def _edge_value(self, ttl: float | None, idle: float | None, now: int) -> bytes:
        ttl_ns = _seconds_to_ns(ttl, "ttl")
        idle_ns = _seconds_to_ns(idle, "idle timeout")
        # last_seen a millisecond before the grant: the filter rewrites it only when it is
        # that old (layout.LAST_SEEN_GRANULARITY_NS), so even a packet in the grant's first
        # millisecond moves it past the grant time and the edge counts as used (its first
        # packet is reported); the idle timeout starts a millisecond early
        return layout.EDGE_VAL.pack(now + ttl_ns if ttl_ns else 0, idle_ns,
                                    now - layout.LAST_SEEN_GRANULARITY_NS, now)

    def _add_kinds(self, kinds: int) -> None:
        cfg = self.config()
        if cfg.edge_kinds | kinds != cfg.edge_kinds:
            cfg.edge_kinds |= kinds
            self._write_config(cfg)

    def grant(self, edge: str | Edge, ttl: float | None = None,
              idle: float | None = None) -> Edge:
        """Allow ``edge``; ``ttl`` seconds from now it expires, and after ``idle`` seconds
        without a packet it stops passing. Re-granting replaces the old limits."""
        e = Edge.parse(edge)
        value = self._edge_value(ttl, idle, time.monotonic_ns())
        self._add_kinds(e.kind)
        syscall.map_update(self.map_fd(_edge_map(e)), e.key(),
                           value)
        return e

    def grant_many(self, edges: Iterable[str | Edge], ttl: float | None = None,
                   idle: float | None = None, chunk: int = 8192) -> int:
        """Bulk grant with batched map updates; returns how many edges were written."""
        parsed = [Edge.parse(e) for e in edges]
        value = self._edge_value(ttl, idle, time.monotonic_ns())
        kinds = 0
        for e in parsed:
            kinds |= e.kind
        self._add_kinds(kinds)
        done = 0
        for lpm in (False, True):
            group = [e for e in parsed if e.in_lpm == lpm]
            fd = self.map_fd(MAP_SEG_EDGES_LPM if lpm else MAP_SEG_EDGES)
            for i in range(0, len(group), chunk):
                part = group[i:i + chunk]
                done += syscall.map_update_batch(fd, b"".join(e.key() for e in part),
                                                 value * len(part), len(part))
        return done

    def revoke(self, edge: str | Edge) -> bool:
        """Remove ``edge``; False when it was not granted."""
        e = Edge.parse(edge)
        return syscall.map_delete(self.map_fd(_edge_map(e)),
                                  e.key())

    def set_edge_times(self, edge: str | Edge, *, expires_ns: int | None = None,
                       last_seen_ns: int | None = None) -> None:
        """Test hook: rewrite an edge's absolute expiry / last-seen (CLOCK_MONOTONIC ns),
        so tests of expiry and idle timeouts need not wait. No product code calls it."""
        e = Edge.parse(edge)
        fd = self.map_fd(_edge_map(e))
        raw = syscall.map_lookup(fd, e.key(), layout.EDGE_VAL.size)
        if raw is None:
            raise EdgeSpecError(f"edge {e} is not granted")
        exp, idle, last, granted = layout.EDGE_VAL.unpack(raw)
        exp = exp if expires_ns is None else expires_ns
        last = last if last_seen_ns is None else last_seen_ns
        syscall.map_update(fd, e.key(), layout.EDGE_VAL.pack(exp, idle, last, granted),
                           syscall.BPF_EXIST)

    def edges(self) -> list[EdgeState]:
        out = []
        for name, lpm in ((MAP_SEG_EDGES, False), (MAP_SEG_EDGES_LPM, True)):
            fd = self.map_fd(name)
            ksize = layout.SEGMENT_MAPS[name].key_size
            for key in list(syscall.map_keys(fd, ksize)):
                raw = syscall.map_lookup(fd, key, layout.EDGE_VAL.size)
                if raw is not None:
                    out.append(EdgeState(Edge.from_key(key, lpm), *layout.EDGE_VAL.unpack(raw)))
        return sorted(out, key=lambda s: s.edge)

    def sweep(self, states: list[EdgeState] | None = None) -> list[Edge]:
        """Delete expired and idle edges (of ``states``, read from the maps by default);
        returns them."""
        now = time.monotonic_ns()
        gone = [s.edge for s in (self.edges() if states is None else states)
                if s.state(now) != "active"]
        for e in gone:
            self.revoke(e)
        return gone

    @property
    def label_policies(self) -> LabelPolicies:
        """The controller's label policies in this filter (entries, modes, counters)."""
        return LabelPolicies(self)

    @property
    def fqdn(self) -> FqdnPolicies:
        """Egress by domain: the FQDN rules, resolvers and learned addresses."""
        return FqdnPolicies(self)

    # -- counters and events ------------------------------------------------------------
    def counters(self) -> dict[str, dict[str, int]]:
        """Per-verdict packet counts by direction (``would_drop_*``: observe mode),
        ring-buffer event counts (sent, suppressed by the rate limit, lost), and how many
        inbound packets the established-flow cache passed (also counted as pass_edge)."""
        def read(slot: int) -> int:
            return self.percpu_sum(MAP_SEG_COUNTERS, slot)

        out: dict[str, dict[str, int]] = {}
        for d, direction in enumerate(layout.DIRECTIONS):
            row = {}
            for v in Verdict:
                row[v.label] = read(d * layout.SLOT_DIR + v)
                if v.is_drop:
                    row["would_" + v.label] = read(d * layout.SLOT_DIR + layout.SLOT_OBSERVED + v)
            out[direction] = row
        out["events"] = {name: read(slot) for name, slot in layout.SLOT_EVENTS.items()}
        out["flow_cache"] = {"hits": read(layout.SLOT_FLOW_CACHE_HIT)}
        return out

    def decode(self, raw: bytes) -> DropRecord:
        record = DropRecord.unpack(raw)
        if record.policy_index:
            return dataclasses.replace(record, policy=self.label_policies.name_of(
                record.policy_index))
        return record

    def events(self, timeout: float = 0.0) -> list[DropRecord]:
        """Drop (and would-drop) records waiting in the ring buffer; waits up to
        ``timeout`` seconds for the first one (tools and tests: the agent reads the ring
        through ``reader(sink)``)."""
        return self.records(timeout)

    # -- test runs --------------------------------------------------------------------
    def test_run(self, packet: bytes, direction: str = "ingress",
                 repeat: int = 1) -> tuple[bool, libbpf.TestRun]:
        """Run the ingress (XDP) or egress (tc) program on ``packet`` with
        BPF_PROG_TEST_RUN; returns (passed, run)."""
        _choice(direction, layout.DIRECTIONS, "direction")
        run = libbpf.test_run(self.prog_fd(PROGRAMS[direction]), packet, repeat)
        if direction == "ingress":
            if run.retval not in (XDP_PASS, XDP_DROP):
                raise BpfError(0, f"unexpected XDP verdict {run.retval}")
            return run.retval == XDP_PASS, run
        if run.retval not in (TC_ACT_OK, TC_ACT_SHOT):
            raise BpfError(0, f"unexpected tc verdict {run.retval}")
        return run.retval == TC_ACT_OK, run

    def status(self) -> dict[str, object]:
        info = self.attach_info()
        return {"pin_dir": str(self.pin_dir),
                "attached": info is not None,
                "iface": self.iface,
                "ifindex": info.ifindex if info else None,
                "xdp_mode": info.xdp_mode if info else None,
                "tc_mode": info.tc_mode if info else None,
                **self.policy(),
                "edges": len(self.edges()),
                "label_policies": self.label_policies.report(),
                "fqdn": self.fqdn.status()}
