"""Pure helpers of the aegis.fleet modules and filters (no node needed)."""

import re

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.aegis.fleet.plugins.filter.network import covers
from ansible_collections.aegis.fleet.plugins.module_utils.nftables import (
    RulesetError,
    declared_tables,
    normalise,
    replace_script,
)
from ansible_collections.aegis.fleet.plugins.module_utils.sandbox import (
    parse_exposure,
    render_dropin,
    valid_unit_name,
)
from ansible_collections.aegis.fleet.plugins.modules.hardening_facts import (
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
])
def test_declared_tables_refuses_what_it_does_not_manage(content, needle):
    with pytest.raises(RulesetError, match=needle):
        declared_tables(content)


def test_normalise_ignores_counter_values_and_trailing_space():
    live = "table inet t {\n\tchain c {\n\t\tcounter packets 12 bytes 3400 drop  \n\t}\n}\n"
    fresh = "table inet t {\n\tchain c {\n\t\tcounter packets 0 bytes 0 drop\n\t}\n}"
    assert normalise(live) == normalise(fresh)
    assert normalise("") == ""


def test_replace_script_is_one_transaction_per_table():
    script = replace_script([("inet", "a")], "table inet a { }")
    assert script == "table inet a {}\ndelete table inet a\ntable inet a { }\n"


def test_render_dropin():
    text = render_dropin({"NoNewPrivileges": True, "PrivateTmp": False,
                          "RestrictAddressFamilies": ["AF_UNIX", "AF_INET"],
                          "CapabilityBoundingSet": "CAP_SETUID\n  CAP_SETGID"}, "managed")
    assert text == ("# managed\n[Service]\nNoNewPrivileges=yes\nPrivateTmp=no\n"
                    "RestrictAddressFamilies=AF_UNIX AF_INET\n"
                    "CapabilityBoundingSet=CAP_SETUID CAP_SETGID\n")


def test_parse_exposure_and_unit_names():
    assert parse_exposure("...\n→ Overall exposure level for cron.service: 3.2 OK :-)\n") == 3.2
    assert parse_exposure("no score here") is None
    assert valid_unit_name("cron.service") and valid_unit_name("user@0.service")
    assert not valid_unit_name("cron") and not valid_unit_name("../etc/passwd.service")


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
