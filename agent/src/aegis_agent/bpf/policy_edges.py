"""Label policies in the segment filter: the controller's compiled entries, their modes and
their per-edge counters (issue 15 part 4).

The controller compiles each label policy into entries for the node it protects (the
destination side), one string each, and sends them with the policies' modes:

    web-db allow 10.0.0.1 -> 10.0.0.2 tcp/5432     an explicit rule (allow | drop | log)
    web-db default 10.0.0.1 -> 10.0.0.2             the pair's default: the policy's drop

``apply`` makes the maps hold exactly that set: entries and policies kept from the last
set keep their counter and index (their counters go on), new ones take free slots (zeroed
first), gone ones are removed. A mode change is one ``seg_policies`` value: the programs
stay attached, the next packet sees it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import layout, syscall
from .edges import Edge, EdgeSpecError

if TYPE_CHECKING:
    from .segment import SegmentFilter

ENTRY_HELP = ("'POLICY ACTION SOURCE -> DESTINATION PROTO/PORT' (ACTION allow, drop or "
              "log) or 'POLICY default SOURCE -> DESTINATION'")
_COUNTER_FIELDS = ("allowed_packets", "allowed_bytes", "dropped_packets", "dropped_bytes",
                   "observed_packets", "observed_bytes")


class PolicyEntryError(ValueError):
    """An entry or a mode the filter cannot hold; the message names it."""


@dataclass(frozen=True, order=True)
class PolicyEntry:
    policy: str
    action: str  # allow | drop | log | default
    src: int
    dst: int
    proto: int  # 0 for default
    port: int  # 0 for default (and icmp)

    @classmethod
    def parse(cls, spec: str) -> PolicyEntry:
        words = spec.split(None, 2)
        if len(words) != 3:
            raise PolicyEntryError(f"bad policy entry {spec!r}: write {ENTRY_HELP}")
        policy, action, rest = words
        _check_name(policy, spec)
        if action == "default":
            left, arrow, right = rest.partition("->")
            try:
                src, dst = (ipaddress.IPv4Address(x.strip()) for x in (left, right))
            except ValueError:
                raise PolicyEntryError(f"bad policy entry {spec!r}: a default names two "
                                       f"addresses — {ENTRY_HELP}") from None
            if not arrow:
                raise PolicyEntryError(f"bad policy entry {spec!r}: missing '->'")
            return cls(policy, action, int(src), int(dst), 0, 0)
        if action not in layout.POL_ACTIONS:
            raise PolicyEntryError(f"bad policy entry {spec!r}: action {action!r} — use "
                                   "allow, drop, log or default")
        try:
            e = Edge.parse(rest)
        except EdgeSpecError as err:
            raise PolicyEntryError(f"bad policy entry {spec!r}: {err}") from None
        if e.src_len != 32 or not e.dst_addr:
            raise PolicyEntryError(f"bad policy entry {spec!r}: a policy entry joins two "
                                   "single addresses (nodes), not networks or 'any'")
        return cls(policy, action, e.src_addr, e.dst_addr, e.proto, e.port)

    def key(self) -> bytes:
        return layout.EDGE_KEY.pack(self.src, self.dst, self.port, self.proto)

    def __str__(self) -> str:
        pair = f"{ipaddress.IPv4Address(self.src)} -> {ipaddress.IPv4Address(self.dst)}"
        if self.action == "default":
            return f"{self.policy} default {pair}"
        proto = layout.PROTO_NAMES.get(self.proto, str(self.proto))
        port = "" if proto == "icmp" else f"/{self.port}"
        return f"{self.policy} {self.action} {pair} {proto}{port}"


def _check_name(name: str, spec: str) -> None:
    if not name or len(name.encode()) > layout.POL_NAME_LEN - 1 or "=" in name:
        raise PolicyEntryError(f"bad policy name {name!r} in {spec!r}: 1 to "
                               f"{layout.POL_NAME_LEN - 1} bytes, no '='")


def parse_modes(items: Iterable[str]) -> dict[str, str]:
    """``NAME=observe|enforce`` items as a dict."""
    out = {}
    for item in items:
        name, sep, mode = item.partition("=")
        _check_name(name, item)
        if not sep or mode not in layout.MODES:
            raise PolicyEntryError(f"bad policy mode {item!r}: write NAME=observe or "
                                   "NAME=enforce")
        out[name] = mode
    return out


class LabelPolicies:
    """The label policy maps of one loaded :class:`SegmentFilter`."""

    def __init__(self, seg: SegmentFilter) -> None:
        self.seg = seg

    def _fd(self, name: str) -> int:
        return self.seg.map_fd(name)

    # -- reading ------------------------------------------------------------------------
    def _policies(self) -> dict[str, tuple[int, str]]:
        """name -> (index, mode) of the installed policies."""
        fd, out = self._fd(layout.MAP_SEG_POLICIES), {}
        names = {v: k for k, v in layout.MODES.items()}
        for idx in range(1, layout.POL_MAX_POLICIES):
            raw = syscall.map_lookup(fd, idx.to_bytes(4, "little"), layout.POL_POLICY.size)
            if raw is None:
                continue
            mode, name = layout.POL_POLICY.unpack(raw)
            name = name.split(b"\0", 1)[0].decode()
            if name:
                out[name] = (idx, names.get(mode, str(mode)))
        return out

    def name_of(self, index: int) -> str | None:
        """The name of the policy at ``index`` of seg_policies (None: none there now)."""
        raw = syscall.map_lookup(self._fd(layout.MAP_SEG_POLICIES), index.to_bytes(4, "little"),
                                 layout.POL_POLICY.size)
        name = layout.POL_POLICY.unpack(raw)[1].split(b"\0", 1)[0].decode() if raw else ""
        return name or None

    def _entries(self) -> dict[bytes, tuple[int, int, int]]:
        """key -> (counter, policy index, action) of the installed entries."""
        rows = syscall.map_rows(self._fd(layout.MAP_SEG_POL_EDGES), layout.EDGE_KEY.size,
                                layout.POL_VAL.size)
        return {key: layout.POL_VAL.unpack(raw) for key, raw in rows.items()}

    def _counters(self, slot: int) -> dict[str, int]:
        ncpu = syscall.possible_cpus()
        size = layout.POL_COUNTERS.size
        raw = syscall.map_lookup(self._fd(layout.MAP_SEG_POL_COUNTERS),
                                 slot.to_bytes(4, "little"), size * ncpu)
        sums = [0] * len(_COUNTER_FIELDS)
        for cpu in range(ncpu if raw else 0):
            for i, v in enumerate(layout.POL_COUNTERS.unpack_from(raw, cpu * size)):
                sums[i] += v
        return dict(zip(_COUNTER_FIELDS, sums, strict=True))

    def report(self) -> dict[str, dict[str, object]]:
        """Per policy: its mode, its counters (the sum of its entries') and each entry
        with its own counters."""
        policies = self._policies()
        by_index = {idx: name for name, (idx, _mode) in policies.items()}
        actions = {v: k for k, v in layout.POL_ACTIONS.items()}
        out: dict[str, dict[str, object]] = {
            name: {"mode": mode, **dict.fromkeys(_COUNTER_FIELDS, 0), "edges": []}
            for name, (_idx, mode) in sorted(policies.items())}
        for key, (counter, pidx, action) in sorted(self._entries().items()):
            name = by_index.get(pidx)
            if name is None:
                continue
            src, dst, port, proto = layout.EDGE_KEY.unpack(key)
            entry = PolicyEntry(name, "default" if proto == 0 and port == 0
                                else actions.get(action, str(action)), src, dst, proto, port)
            counts = self._counters(counter)
            row = out[name]
            for f in _COUNTER_FIELDS:
                row[f] += counts[f]  # type: ignore[operator]
            row["edges"].append({"edge": str(entry).split(" ", 1)[1], **counts})  # type: ignore[union-attr]
        return out

    # -- writing ------------------------------------------------------------------------
    def set_mode(self, name: str, mode: str) -> None:
        """Flip one installed policy between observe and enforce (one map value)."""
        if mode not in layout.MODES:
            raise PolicyEntryError(f"bad mode {mode!r}: observe or enforce")
        current = self._policies()
        if name not in current:
            raise PolicyEntryError(f"no label policy {name!r} is installed; installed: "
                                   f"{', '.join(sorted(current)) or 'none'}")
        self._write_policy(current[name][0], name, mode)

    def _write_policy(self, idx: int, name: str, mode: str) -> None:
        syscall.map_update(self._fd(layout.MAP_SEG_POLICIES), idx.to_bytes(4, "little"),
                           layout.POL_POLICY.pack(layout.MODES[mode], name.encode()))

    def apply(self, modes: Mapping[str, str], entries: Iterable[str]) -> dict[str, int]:
        """Make the maps hold exactly ``entries`` of the policies ``modes`` names (all
        checked before anything is written); returns how many entries were added, kept
        and removed."""
        parsed = _checked(modes, entries)
        installed = self._policies()
        index = self._write_policies(modes, installed)
        done = self._write_entries(parsed, index)
        for name, (idx, _mode) in installed.items():
            if name not in modes:  # no entry names it any more (arrays have no delete)
                syscall.map_update(self._fd(layout.MAP_SEG_POLICIES), idx.to_bytes(4, "little"),
                                   bytes(layout.POL_POLICY.size))
        cfg = self.seg.config()
        flags = cfg.flags | layout.CFG_POLICY if parsed else cfg.flags & ~layout.CFG_POLICY
        if flags != cfg.flags:
            cfg.flags = flags
            self.seg._write_config(cfg)
        return done

    def _write_policies(self, modes: Mapping[str, str],
                        installed: Mapping[str, tuple[int, str]]) -> dict[str, int]:
        """Names kept keep their index, new names take free ones; returns name -> index."""
        free = iter(sorted(set(range(1, layout.POL_MAX_POLICIES))
                           - {i for i, _m in installed.values()}))
        index = {n: installed[n][0] if n in installed else next(free) for n in modes}
        for name, mode in modes.items():
            if installed.get(name) != (index[name], mode):
                self._write_policy(index[name], name, mode)
        return index

    def _write_entries(self, parsed: list[PolicyEntry], index: Mapping[str, int]
                       ) -> dict[str, int]:
        """A key kept keeps its counter slot; a new one takes a free slot, zeroed first."""
        old = self._entries()
        free_slots = iter(sorted(set(range(1, layout.POL_MAX_COUNTERS))
                                 - {c for c, _p, _a in old.values()}))
        zero = syscall.possible_cpus() * bytes(layout.POL_COUNTERS.size)
        fd = self._fd(layout.MAP_SEG_POL_EDGES)
        added = kept = 0
        wanted = set()
        for e in parsed:
            key = e.key()
            wanted.add(key)
            action = layout.POL_ACTIONS["drop" if e.action == "default" else e.action]
            if key in old:
                slot = old[key][0]
                kept += 1
            else:
                slot = next(free_slots)
                syscall.map_update(self._fd(layout.MAP_SEG_POL_COUNTERS),
                                   slot.to_bytes(4, "little"), zero)
                added += 1
            if old.get(key) != (slot, index[e.policy], action):
                syscall.map_update(fd, key, layout.POL_VAL.pack(slot, index[e.policy], action))
        gone = [key for key in old if key not in wanted]
        for key in gone:
            syscall.map_delete(fd, key)
        return {"added": added, "kept": kept, "removed": len(gone)}


def _checked(modes: Mapping[str, str], entries: Iterable[str]) -> list[PolicyEntry]:
    parsed = sorted({PolicyEntry.parse(e) for e in entries})
    for e in parsed:
        if e.policy not in modes:
            raise PolicyEntryError(f"policy entry {e} names policy {e.policy!r}, which "
                                   "has no mode: list it as NAME=observe|enforce")
    keys = [e.key() for e in parsed]
    if len(set(keys)) != len(keys):
        raise PolicyEntryError("two policy entries for one source, destination and "
                               "port: the controller compiles one per edge")
    if len(modes) >= layout.POL_MAX_POLICIES or len(parsed) >= layout.POL_MAX_COUNTERS:
        raise PolicyEntryError(f"too many policies ({len(modes)}) or entries "
                               f"({len(parsed)}) for the filter's maps")
    for name, mode in modes.items():
        if mode not in layout.MODES:
            raise PolicyEntryError(f"policy {name!r}: mode {mode!r} — observe or enforce")
    return parsed
