# ruff: noqa: E501  (sample /proc/net lines are as wide as the kernel prints them)
"""The agent's inventory: dpkg packages, listening sockets from /proc/net (parsed from
sample files and read from this process's own namespace), and the digest the heartbeat
sends in place of an unchanged inventory."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from aegis_agent import inventory
from aegis_protocol.enrollment import Inventory, Listening

STATUS = """\
Package: openssh-server
Status: install ok installed
Architecture: amd64
Version: 1:9.2p1-2+deb12u3
Description: secure shell (SSH) server
 a second description line: Status: install ok installed

Package: telnetd
Status: deinstall ok config-files
Architecture: amd64
Version: 0.17+2.4-2

Package: libc6
Status: install ok installed
Architecture: i386
Version: 2.36-9

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2024a-0+deb12u1
"""

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000   998        0 1 1
   1: 0100007F:D2F0 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2 1
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1
   1: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1
"""
UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  0: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 5 2 0 0
"""


def test_packages_are_the_installed_ones_with_foreign_arch_qualified(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(STATUS)
    native = inventory._native_arch()
    found = inventory.packages(status)
    assert found["tzdata"] == "2024a-0+deb12u1"
    assert "telnetd" not in found  # removed, only its config files left
    if native == "amd64":
        assert found["openssh-server"] == "1:9.2p1-2+deb12u3"
        assert found["libc6:i386"] == "2.36-9"
    assert inventory.packages(tmp_path / "missing") == {}


def test_listening_sockets_from_proc_net_files(tmp_path: Path) -> None:
    for name, text in (("tcp", TCP), ("tcp6", TCP6), ("udp", UDP)):
        (tmp_path / name).write_text(text)
    assert inventory.listening(tmp_path) == [
        Listening(proto="tcp", address="::", port=22),
        Listening(proto="tcp", address="::1", port=53),
        Listening(proto="tcp", address="127.0.0.1", port=8080, uid=998),
        Listening(proto="udp", address="127.0.0.53", port=53, uid=101),
    ]


def test_a_real_listening_socket_is_found_and_a_closed_one_is_gone() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        mine = Listening(proto="tcp", address="127.0.0.1", port=port, uid=os.getuid())
        assert mine in inventory.listening()
    assert mine not in inventory.listening()


def test_digest_ignores_socket_order_and_follows_any_change() -> None:
    a = Listening(proto="tcp", address="::", port=22)
    b = Listening(proto="udp", address="127.0.0.53", port=53)
    one = Inventory(kernel="6.1", packages={"x": "1"}, listening=[a, b])
    assert one.digest() == Inventory(kernel="6.1", packages={"x": "1"},
                                     listening=[b, a]).digest()
    assert one.digest() != one.model_copy(update={"packages": {"x": "2"}}).digest()
    assert len(inventory.collect().digest()) == 64
