"""Pure helpers of the aegis.fleet modules and filters (no node needed)."""

import re

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.aegis.fleet.plugins.filter.network import covers
from ansible_collections.aegis.fleet.plugins.module_utils.nftables import (
    RulesetError,
    declared_tables,
    delete_script,
    interfaces,
    normalise,
    parse_table_names,
    replace_script,
    restore_script,
    restored_tables,
    split_listing,
)
from ansible_collections.aegis.fleet.plugins.module_utils.sandbox import (
    check_settings,
    parse_exposure,
    render_dropin,
    section,
    valid_unit_name,
)
from ansible_collections.aegis.fleet.plugins.modules.hardening_facts import (
    kernel_writable,
    mount_points,
    parse_sshd,
)

pytestmark = pytest.mark.unit

BASELINE = """
# a comment with { braces } and "quotes"
table inet aegis_baseline {
    set management_v4 { type ipv4_addr; flags interval; }
    chain input { type filter hook input priority filter; policy drop; }
}
table ip aegis_nat {
}
"""


def test_declared_tables_in_order():
    assert declared_tables(BASELINE) == [("inet", "aegis_baseline"), ("ip", "aegis_nat")]


@pytest.mark.parametrize(("content", "needle"), [
    ("flush ruleset\ntable inet a {}", "only declare whole tables"),
    ("table inet a {}\nadd rule inet other input drop", "only declare whole tables"),
    ("table inet a {", "never closed"),
    ("table inet a {}}", "without its '{'"),
    ("table foo a {}", "unknown family 'foo'"),
    ("# nothing", "declares no table"),
    ("table inet a {}\ntable inet a {}", "same table twice"),
    ("include \"/etc/nftables.d/*.nft\"\ntable inet a {}", "only declare whole tables"),
    ("table a { }", "with the family written out"),
    ("table inet a { chain c { comment \"x }\n", "never closed"),
    ('table inet a { chain c { comment "open }}', "'\"' that is never closed"),
])
def test_declared_tables_refuses_what_it_does_not_manage(content, needle):
    with pytest.raises(RulesetError, match=needle):
        declared_tables(content)


def test_declared_tables_allows_defines_and_braces_in_strings():
    content = ('define mgmt = { 10.0.0.0/8, 192.0.2.0/24 }\n'
               'table inet a { chain c { ip saddr $mgmt accept comment "not a } brace" } }\n'
               'table ip6 b { }')
    assert declared_tables(content) == [("inet", "a"), ("ip6", "b")]


def test_parse_table_names():
    assert parse_table_names(["inet a", " ip6  b "]) == [("inet", "a"), ("ip6", "b")]
    with pytest.raises(RulesetError, match="'inet' is not 'FAMILY NAME'"):
        parse_table_names(["inet"])
    with pytest.raises(RulesetError, match=re.escape("e.g. 'inet aegis_baseline'")):
        parse_table_names(["filter a"])


def test_interfaces_matched_by_index_are_found():
    content = ('table netdev t { chain c { type filter hook ingress device "eth0" priority 0; } }\n'
               'table inet a { chain c {\n iif "eth0" accept\n oif { "veth1", wg0 } drop\n'
               ' iifname "ens3" accept\n iif lo accept # oif "commented"\n iif $var drop } }')
    assert interfaces(content) == ["eth0", "veth1", "wg0", "lo"]  # lo exists in any netns


def test_normalise_ignores_counter_values_and_trailing_space():
    live = "table inet t {\n\tchain c {\n\t\tcounter packets 12 bytes 3400 drop  \n\t}\n}\n"
    fresh = "table inet t {\n\tchain c {\n\t\tcounter packets 0 bytes 0 drop\n\t}\n}"
    assert normalise(live) == normalise(fresh)
    assert normalise("") == ""


def test_normalise_ignores_named_counters_and_quota_usage():
    live = ("table inet t {\n\tcounter c {\n\t\tpackets 7 bytes 420\n\t}\n"
            "\tchain d {\n\t\tquota over 10 mbytes used 3 kbytes drop\n\t}\n}\n")
    fresh = ("table inet t {\n\tcounter c {\n\t\tpackets 0 bytes 0\n\t}\n"
             "\tchain d {\n\t\tquota over 10 mbytes drop\n\t}\n}\n")
    assert normalise(live) == normalise(fresh)
    # A real difference still shows.
    assert normalise(live) != normalise(fresh.replace("drop", "accept"))


def test_replace_script_is_one_transaction_per_table():
    script = replace_script([("inet", "a")], "table inet a { }")
    assert script == "table inet a {}\ndelete table inet a\ntable inet a { }\n"
    assert delete_script([("ip", "b")]) == "table ip b {}\ndelete table ip b\n"


def test_restore_script_restores_existing_and_deletes_new_tables():
    old = "table inet a {\n\tchain c {\n\t}\n}\n"
    script = restore_script([("inet", "a"), ("ip", "new")], {("inet", "a"): old})
    assert script == ("table inet a {}\ndelete table inet a\n" + old
                      + "table ip new {}\ndelete table ip new\n")
    assert restored_tables(script) == [("inet", "a"), ("ip", "new")]


def test_restore_script_keeps_the_state_saved_by_an_unconfirmed_change():
    first = restore_script([("inet", "a")], {("inet", "a"): "table inet a {\n}\n"})
    # A second change before confirmation: inet a now holds the unconfirmed rules; the
    # rollback must still return to what was saved first, and also cover the new table.
    second = restore_script([("inet", "a"), ("ip", "b")],
                            {("inet", "a"): "table inet a { unconfirmed }\n",
                             ("ip", "b"): "table ip b {\n}\n"}, previous=first)
    assert second.startswith(first)
    assert "unconfirmed" not in second
    assert restored_tables(second) == [("inet", "a"), ("ip", "b")]


def test_render_dropin():
    text = render_dropin({"NoNewPrivileges": True, "PrivateTmp": False,
                          "RestrictAddressFamilies": ["AF_UNIX", "AF_INET"],
                          "CapabilityBoundingSet": "CAP_SETUID\n  CAP_SETGID"}, "managed")
    assert text == ("# managed\n[Service]\nNoNewPrivileges=yes\nPrivateTmp=no\n"
                    "RestrictAddressFamilies=AF_UNIX AF_INET\n"
                    "CapabilityBoundingSet=CAP_SETUID CAP_SETGID\n")


def test_render_dropin_section_follows_the_unit_type():
    assert section("cron.service") == "Service" and section("ssh.socket") == "Socket"
    text = render_dropin({"PrivateTmp": True}, "m", section("tmp.mount"))
    assert text == "# m\n[Mount]\nPrivateTmp=yes\n"


def test_check_settings():
    good = {"PrivateTmp": True, "SystemCallFilter": ["@system-service"], "UMask": "0077"}
    assert check_settings(good) == []
    [unknown] = check_settings({"PrivateTemp": True})
    assert "unknown directive(s) PrivateTemp" in unknown and "allow_unknown=true" in unknown
    assert check_settings({"Environment": "A=1"}, allow_unknown=True) == []
    assert "not a directive name" in check_settings({"X=1\nExecStart": "x"}, allow_unknown=True)[0]
    assert "flat list" in check_settings({"ReadOnlyPaths": [["/a"]]})[0]
    assert "flat list" in check_settings({"PrivateTmp": None})[0]
    assert "flat list" in check_settings({"ReadOnlyPaths": []})[0]


def test_parse_exposure_and_unit_names():
    assert parse_exposure("...\n→ Overall exposure level for cron.service: 3.2 OK :-)\n") == 3.2
    assert parse_exposure("no score here") is None
    assert valid_unit_name("cron.service") and valid_unit_name("user@0.service")
    assert valid_unit_name("ssh.socket") and valid_unit_name("tmp.mount")
    assert not valid_unit_name("cron") and not valid_unit_name("../etc/passwd.service")
    assert not valid_unit_name("apt-daily.timer")  # timers take no sandboxing directives


def test_kernel_writable_is_false_for_a_read_only_or_missing_tree(tmp_path):
    assert kernel_writable(str(tmp_path / "missing")) is False
    # /proc/sys/kernel in a container node is mounted read-only; on this machine it may be
    # either, but the answer must agree with the mount flag.
    import os
    ro = bool(os.statvfs("/proc/sys/kernel").f_flag & os.ST_RDONLY)
    if ro:
        assert kernel_writable() is False


def test_parse_sshd_keeps_repeated_keywords():
    conf = parse_sshd("port 22\nhostkey /a\nhostkey /b\npasswordauthentication no\n")
    assert conf == {"port": "22", "hostkey": ["/a", "/b"], "passwordauthentication": "no"}


def test_mount_points_reads_superblock_flags_too():
    info = ("36 25 0:32 / /tmp rw,nosuid,nodev shared:1 - tmpfs tmpfs rw,size=1k\n"
            "37 25 0:33 / /srv rw - ext4 /dev/sda rw\n")
    assert mount_points(info, ("/tmp", "/var/tmp")) == {
        "/tmp": {"fstype": "tmpfs", "options": ["rw", "nosuid", "nodev"]}}


def test_covers_filter():
    assert covers(["10.0.0.0/8", "192.0.2.7"], "10.1.2.3")
    assert covers(["192.0.2.7"], "192.0.2.7")
    assert not covers(["198.51.100.0/24"], "10.1.2.3")
    assert not covers(["2001:db8::/32"], "10.1.2.3")
    with pytest.raises(AnsibleFilterError, match=re.escape("'10.0.0.300' is not an IP address")):
        covers(["10.0.0.300"], "10.1.2.3")
    with pytest.raises(AnsibleFilterError, match="must be one address"):
        covers(["10.0.0.0/8"], "10.0.0.0/24")


def test_split_listing_by_table():
    listing = "table ip b {\n}\ntable inet a {\n\tchain c {\n\t}\n}\n"
    chunks = split_listing(listing)
    assert list(chunks) == [("ip", "b"), ("inet", "a")]
    assert chunks[("inet", "a")] == "table inet a {\n\tchain c {\n\t}\n}\n"
