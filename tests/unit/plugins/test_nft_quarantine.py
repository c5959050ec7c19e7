"""The quarantine's nftables fallback (module_utils/nft_quarantine): the script real nft
loads (in a network namespace of the test's own, gone with its process), the peers read
back from the table's comment, and the SSH source kept."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ansible_collections.aegis.fleet.plugins.module_utils import nft_quarantine as nq

pytestmark = pytest.mark.unit

PEERS = ["192.0.2.7 tcp/22", "10.0.0.0/24", "192.0.2.9 icmp", "192.0.2.10 udp"]


def _in_own_netns(script: str) -> str:
    """Load ``script`` twice (a re-run replaces the table) in a throw-away network
    namespace and return the listing."""
    if shutil.which("nft") is None or shutil.which("unshare") is None:
        pytest.skip("nft and unshare are needed")
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c",
         f"nft -f - <<'EOF'\n{script}EOF\nnft -f - <<'EOF'\n{script}EOF\n"
         "nft list ruleset"],
        capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_table_drops_all_but_loopback_and_the_peers_and_names_them() -> None:
    listing = _in_own_netns(nq.script(PEERS))
    assert listing.count(f"table inet {nq.TABLE}") == 1
    assert listing.count("policy drop;") == 2
    for rule in ('iif "lo" accept', 'oif "lo" accept',
                 "ip saddr 192.0.2.7 tcp dport 22 accept", "ip daddr 192.0.2.7 tcp sport 22 accept",
                 "ip saddr 10.0.0.0/24 accept", "ip daddr 192.0.2.9 ip protocol icmp accept",
                 "ip saddr 192.0.2.10 meta l4proto udp accept"):
        assert rule in listing, (rule, listing)
    found = nq._COMMENT.search(listing)
    assert found and [p.strip() for p in found.group(1).split(",")] == sorted(PEERS)


def test_no_peer_leaves_loopback_only() -> None:
    listing = _in_own_netns(nq.script([]))
    assert "saddr" not in listing and "daddr" not in listing
    assert 'iif "lo" accept' in listing


def test_the_ssh_source_is_a_peer_when_the_module_runs_over_ssh() -> None:
    ssh = {"SSH_CONNECTION": "192.0.2.7 50022 192.0.2.2 2222"}
    assert nq.ssh_source(ssh) == "192.0.2.7 tcp/2222"
    assert nq.ssh_source({}) is None
    assert nq.ssh_source({"SSH_CONNECTION": "2001:db8::7 50022 2001:db8::2 22"}) is None
    assert nq.ssh_source({"SSH_CONNECTION": "garbage"}) is None
