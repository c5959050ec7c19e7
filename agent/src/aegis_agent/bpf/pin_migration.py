"""What an older build of the segment filter left pinned, read without this build's checks,
so a new agent can carry the policy over instead of refusing (or crashing on) old pins.

    old = read_old_pins(pin_dir, layout.SEGMENT_MAPS, carry=(...))
    old.config      # layout.Config (an older, shorter struct config is read too)
    old.rows        # map name -> {key: value}, for each carried map whose key and value
                    #   sizes are still this build's (others are left behind, named)
    old.attach      # layout.AttachState: where the old links were

The caller (``SegmentFilter.load``) detaches the old links, loads this build and writes
what was read back: a recreate with the policy carried over.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import layout, syscall
from .layout import MAP_SEG_ATTACH, MAP_SEG_CONFIG, AttachState, Config, MapSpec
from .syscall import BpfError


@dataclass
class OldPins:
    config: Config
    attach: AttachState
    rows: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    left_behind: list[str] = field(default_factory=list)  # maps not carried, with why


def _first(fd: int, value_size: int) -> bytes | None:
    return syscall.map_lookup(fd, bytes(4), value_size)


def read_old_pins(pin_dir: Path, maps: Mapping[str, MapSpec],
                  carry: Iterable[str]) -> OldPins:
    """Read the config, attach state and the ``carry`` maps pinned in ``pin_dir``."""
    fds: dict[str, tuple[int, syscall.MapInfo]] = {}
    try:
        for name in maps:
            with contextlib.suppress(BpfError):  # a map the old build did not have
                fd = syscall.obj_get(str(pin_dir / name))
                fds[name] = (fd, syscall.map_info(fd))
        cfg_raw = attach_raw = None
        if MAP_SEG_CONFIG in fds:
            fd, info = fds[MAP_SEG_CONFIG]
            cfg_raw = _first(fd, info.value_size)
        if MAP_SEG_ATTACH in fds:
            fd, info = fds[MAP_SEG_ATTACH]
            if info.value_size == layout.ATTACH.size:
                attach_raw = _first(fd, info.value_size)
        out = OldPins(Config.unpack(cfg_raw) if cfg_raw else Config(),
                      AttachState.unpack(attach_raw or bytes(layout.ATTACH.size)))
        for name in carry:
            spec = maps[name]
            if name not in fds:
                out.left_behind.append(f"{name} (not pinned by the old build)")
                continue
            fd, info = fds[name]
            if (info.key_size, info.value_size, info.type) != (spec.key_size, spec.value_size,
                                                               spec.type):
                out.left_behind.append(f"{name} (key/value {info.key_size}/{info.value_size},"
                                       f" now {spec.key_size}/{spec.value_size})")
                continue
            out.rows[name] = syscall.map_rows(fd, spec.key_size, spec.value_size)
        return out
    finally:
        for fd, _info in fds.values():
            os.close(fd)
