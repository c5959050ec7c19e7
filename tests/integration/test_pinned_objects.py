"""Every pinned object re-opens only pins that match what this agent declares: each map
of the segment filter and both monitors is checked, and a mismatch names the pin, the
map, what differs and the fix."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from aegis_agent.bpf import PinMismatchError, PinnedObject, SegmentFilter
from aegis_agent.bpf.layout import PROG_EXEC_LSM, MapSpec
from aegis_agent.bpf.monitors import ConnectMonitor, ExecMonitor
from conftest import sub_prefix

pytestmark = pytest.mark.integration

PREFIX = sub_prefix()
COMPONENTS: list[type[PinnedObject]] = [SegmentFilter, ExecMonitor, ConnectMonitor]
CASES = [(cls, name) for cls in COMPONENTS for name in cls.MAPS]


@pytest.fixture(scope="module")
def pinned() -> Iterator[dict[type[PinnedObject], PinnedObject]]:
    """Each component loaded and pinned once (nothing attached)."""
    made: dict[type[PinnedObject], PinnedObject] = {}
    try:
        for cls in COMPONENTS:
            obj = cls(pin_dir=f"/sys/fs/bpf/{PREFIX}-{cls.OBJECT}")
            made[cls] = obj
            obj.load(skip=(PROG_EXEC_LSM,) if cls is ExecMonitor else ())
            obj.close()
        yield made
    finally:
        for obj in made.values():
            obj.close()
            obj.remove()


def _drifted(spec: MapSpec) -> MapSpec:
    """The same map as another build might declare it: a different value size (a ring
    buffer has none: a different size of ring)."""
    if spec.value_size:
        return dataclasses.replace(spec, value_size=spec.value_size + 8)
    return dataclasses.replace(spec, max_entries=(spec.max_entries or 4096) * 2)


def test_matching_pins_reopen(pinned) -> None:
    for cls, obj in pinned.items():
        again = cls(pin_dir=obj.pin_dir)
        again.open()
        assert set(again._maps) == set(cls.MAPS)
        again.close()


@pytest.mark.parametrize(("cls", "name"), CASES, ids=[f"{c.OBJECT}-{n}" for c, n in CASES])
def test_reopen_with_another_map_size_names_the_map(pinned, cls: type[PinnedObject],
                                                    name: str) -> None:
    maps = dict(cls.MAPS)
    maps[name] = _drifted(maps[name])
    other_build = type("OtherBuild", (cls,), {"MAPS": maps})
    obj = other_build(pin_dir=pinned[cls].pin_dir)
    with pytest.raises(PinMismatchError) as err:
        obj.open()
    msg = str(err.value)
    assert f"map {name!r}" in msg and str(obj.pin(name)) in msg
    assert "expected" in msg and "detach and re-attach" in msg
    assert not obj.is_open  # nothing half-open is left behind
    assert obj.pin(name).exists()  # and the pins (enforcement) are untouched


def test_attestation_reads_each_pinned_program_by_name_and_tag(pinned) -> None:
    """measure.bpf_objects reads struct bpf_prog_info's name through ProgInfo.name."""
    from aegis_agent import measure

    progs = [o for o in measure.bpf_objects("segment", pinned[SegmentFilter].pin_dir)
             if o["kind"] == "prog"]
    assert sorted(o["name"] for o in progs) == sorted(SegmentFilter.PROGRAMS)
    assert all(len(str(o["tag"])) == 16 for o in progs)
