"""The edge and management-peer syntax, and the missing-object hint: no kernel needed."""

from __future__ import annotations

import ipaddress

import pytest

from aegis_agent.bpf import EdgeSpecError, ObjectMissingError, SegmentFilter
from aegis_agent.bpf.edges import Edge, Peer
from aegis_agent.bpf.objects import object_path

pytestmark = pytest.mark.unit


def test_missing_object_names_make(tmp_path):
    with pytest.raises(ObjectMissingError, match=r"make -C"):
        object_path("segment", tmp_path / "nope.bpf.o")
    with pytest.raises(ObjectMissingError, match=r"make -C .*bpf"):
        object_path("no-such-program")



@pytest.mark.parametrize(("spec", "message"), [
    ("10.0.0.0/24 192.0.2.2 tcp/22", "missing '->'"),
    ("10.0.0.0/24 -> 192.0.2.2", "after '->' write DESTINATION and PROTO/PORT"),
    ("10.0.0.1/24 -> 192.0.2.2 tcp/22", "host bits are set; did you mean 10.0.0.0/24"),
    ("10.0.0.300 -> 192.0.2.2 tcp/22", "not an IPv4 address or CIDR"),
    ("10.0.0.0/24 -> 192.0.2.0/24 tcp/22", "CIDR only on the source side"),
    ("10.0.0.0/24 -> 192.0.2.2 tcp", "missing port"),
    ("10.0.0.0/24 -> 192.0.2.2 tcp/0", "use 1-65535"),
    ("10.0.0.0/24 -> 192.0.2.2 tcp/http", "use 1-65535"),
    ("10.0.0.0/24 -> 192.0.2.2 sctp/9", "use tcp, udp or icmp"),
    ("10.0.0.0/24 -> 192.0.2.2 icmp/8", "icmp takes no port"),
    ("2001:db8::/32 -> 192.0.2.2 tcp/22", "IPv6 edges are not supported yet"),
    ("a b -> 192.0.2.2 tcp/22", "one SOURCE"),
])
def test_edge_parse_errors_say_what_and_how(spec, message):
    with pytest.raises(EdgeSpecError) as err:
        Edge.parse(spec)
    assert message in str(err.value)
    assert "e.g." in str(err.value)


def test_edge_round_trip_and_peer_parsing():
    for spec in ("10.0.0.0/24 -> 192.0.2.2 tcp/22", "any -> 192.0.2.2 udp/53",
                 "192.0.2.1 -> any icmp", "any -> any tcp/443"):
        e = Edge.parse(spec)
        assert str(e) == spec
        assert Edge.from_key(e.key(), e.in_lpm) == e
    assert str(Peer.parse("192.0.2.10 tcp/22")) == "192.0.2.10 tcp/22"
    with pytest.raises(EdgeSpecError, match="quarantine a no-op"):
        Peer.parse("any")
    with pytest.raises(ValueError, match="positive number of seconds"):
        SegmentFilter(None, "/sys/fs/bpf/x")._edge_value(-1, None, 0)


@pytest.mark.parametrize("text", [
    "10.0.0.1", "10.0.0.0/8", "10.0.0.0/08", "0.0.0.0/0", "255.255.255.255", "192.0.2.0/31",
    "10.0.0.0/255.0.0.0", "10.0.0.1/24", "010.0.0.1", "10.0.0.256", "1.2.3", "1.2.3.4.5",
    "10.0.0.0/", "10.0.0.0/33", "\u0661\u0660.0.0.1", "::1", "1.2.3.4/ 8", "+1.2.3.4", "1.2.3.4/-1",
])
def test_fast_address_path_agrees_with_ipaddress(text):
    """The batch path reads plain dotted quads without ipaddress objects: for every form
    it takes the same edge, and every form it does not take gets ipaddress's verdict."""

    spec = f"{text} -> any tcp/22"
    try:
        net = ipaddress.ip_network(text, strict=True)
        want = None if net.version != 4 else (int(net.network_address), net.prefixlen)
    except ValueError:
        want = None
    if want is None:
        with pytest.raises(EdgeSpecError):
            Edge.parse(spec)
        return
    edge = Edge.parse(spec)
    assert (edge.src_addr, edge.src_len) == want
    assert edge.src == ipaddress.ip_network(text) and edge.dst is None
    assert Edge.from_key(edge.key(), edge.in_lpm) == edge
    assert Edge.parse(str(edge)) == edge
