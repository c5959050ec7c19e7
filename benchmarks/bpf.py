"""``python -m benchmarks.bpf``: what the segment filter costs.

  - ns per packet (BPF_PROG_TEST_RUN, ``--repeat`` runs in the kernel) for an allowed
    packet and a miss, with ``--edges`` exact edges loaded by batch update, next to an
    empty XDP program measured the same way;
  - parsing ``--edges`` edge specs before the batch load (seconds);
  - grant-to-enforce latency: from just before the map update until a test run of the
    newly allowed packet returns XDP_PASS (the update syscall plus one run), p50/p99.

Prints through ``benchmarks.figures.report``. Needs root (loads programs, pins under
bpffs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import time
from ipaddress import IPv4Address

from aegis_agent.bpf import layout, libbpf
from aegis_agent.bpf.bpffs import BPFFS
from aegis_agent.bpf.edges import Edge
from aegis_agent.bpf.objects import object_path
from aegis_agent.bpf.segment import SegmentFilter

from .figures import percentile, report

NODE = "192.0.2.2"


def _syn(src: str, dst: str = NODE, dport: int = 22) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0,
                     IPv4Address(src).packed, IPv4Address(dst).packed)
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + tcp


def _src(i: int) -> str:
    return str(IPv4Address(int(IPv4Address("10.0.0.0")) + i))


def run(edges: int, repeat: int, samples: int) -> dict:
    """The figures, by name (ns per packet, seconds, microseconds)."""
    res: dict = {}
    empty = libbpf.load_object(str(object_path("empty")))
    try:
        res["empty_xdp_ns"] = libbpf.test_run(empty.program_fd(layout.PROG_EMPTY_XDP),
                                              _syn(_src(1)), repeat).duration_ns
    finally:
        empty.close()

    # default event rate limit (1000/s): misses are counted, few become events
    seg = SegmentFilter(None, BPFFS / f"aegis-bench-{os.getpid()}")
    try:
        seg.load()
        specs = [f"{_src(i)} -> {NODE} tcp/22" for i in range(edges)]
        t0 = time.perf_counter()
        parsed = [Edge.parse(spec) for spec in specs]
        t1 = time.perf_counter()
        n = seg.grant_many(parsed)
        res["edge_parse_s"] = round(t1 - t0, 3)
        res["batch_load_s"] = round(time.perf_counter() - t1, 3)
        assert n == edges
        hit, miss = _syn(_src(edges // 2)), _syn("172.31.255.1")
        ok, run_hit = seg.test_run(hit, repeat=repeat)
        assert ok, "the allowed packet was dropped"
        ok, run_miss = seg.test_run(miss, repeat=repeat)
        assert not ok, "the unknown packet passed"
        res["allow_hit_ns"] = run_hit.duration_ns
        res["miss_ns"] = run_miss.duration_ns
        # the worst miss: every edge shape granted, so all six lookups run
        cfg = seg.config()
        cfg.edge_kinds = sum(layout.EdgeKind)
        seg._write_config(cfg)
        res["miss_all_shapes_ns"] = seg.test_run(miss, repeat=repeat)[1].duration_ns

        lat, upd = [], []
        for i in range(samples):
            pkt = _syn(_src(edges + 10 + i))
            t0 = time.perf_counter_ns()
            seg.grant(f"{_src(edges + 10 + i)} -> {NODE} tcp/22")
            t1 = time.perf_counter_ns()
            ok, _ = seg.test_run(pkt)
            t2 = time.perf_counter_ns()
            assert ok
            upd.append((t1 - t0) / 1e3)
            lat.append((t2 - t0) / 1e3)
        res["grant_to_enforce_us_p50"] = round(statistics.median(lat), 1)
        res["grant_to_enforce_us_p99"] = round(percentile(lat, 0.99), 1)
        res["grant_call_us_p50"] = round(statistics.median(upd), 1)
        res["grant_call_us_p99"] = round(percentile(upd, 0.99), 1)
    finally:
        seg.detach()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bpf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--edges", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=1_000_000)
    p.add_argument("--samples", type=int, default=1000)
    a = p.parse_args(argv)
    figures = run(a.edges, a.repeat, a.samples)
    empty = f"empty XDP program: {figures['empty_xdp_ns']} ns"
    report("bpf_segment", figures,
           title=f"segment filter (BPF_PROG_TEST_RUN, repeat={a.repeat:,}, {a.edges:,} edges, "
                 f"libbpf {libbpf.version()}; miss_all_shapes: all six edge shapes in use)",
           peers={"allow_hit_ns": empty, "miss_ns": empty, "miss_all_shapes_ns": empty},
           targets={"edge_parse_s": f"<= {0.5 * a.edges / 100_000:.3g} s "
                                    "(0.5 s per 100,000 specs; was 5-6.5 s)"},
           notes={"edges": a.edges, "repeat": a.repeat, "samples": a.samples,
                  "libbpf": libbpf.version()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
