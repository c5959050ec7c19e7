"""The harness leaves nothing behind: namespaces, links, servers, also on failure."""

import os
import subprocess

import hvac
import pytest
from pyroute2 import netns as pyroute2_netns

from aegis_lab.cleanup import leftovers
from conftest import sub_prefix
from harness import netns_pair, openbao_dev

pytestmark = pytest.mark.integration


def test_netns_pair_carries_traffic_and_is_removed_even_on_failure():
    prefix = sub_prefix()
    with pytest.raises(RuntimeError, match="boom"), netns_pair(prefix) as pair:
        assert pair.a in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                        text=True, check=False).stdout
        assert pair.b in pyroute2_netns.listnetns()
        assert leftovers(prefix) != []
        raise RuntimeError("boom")
    assert leftovers(prefix) == []


def test_openbao_dev_server_is_real_and_is_stopped():
    prefix = sub_prefix()
    with openbao_dev(prefix) as bao:
        client = hvac.Client(url=bao.addr, token=bao.token)
        assert client.is_authenticated()
        client.secrets.kv.v2.create_or_update_secret(path="aegis/t", secret={"k": "v"})
        got = client.secrets.kv.v2.read_secret_version(path="aegis/t",
                                                       raise_on_deleted_version=True)
        assert got["data"]["data"] == {"k": "v"}
        pid = bao.pid
        assert leftovers(prefix) != []  # the running server is found by its prefix
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert leftovers(prefix) == []


def test_netns_fixture_gives_reachable_peers(netns):
    res = netns.run(netns.a, "ip", "-br", "addr", "show", "dev", netns.a_if)
    assert netns.a_addr in res.stdout
    tcp = netns.run(netns.b, "python3", "-c",
                    "import socket,sys;s=socket.socket();s.settimeout(2);"
                    f"sys.exit(s.connect_ex(('{netns.a_addr}', 9)) not in (111,))")
    assert tcp.returncode == 0  # connection refused = the packet reached the peer
