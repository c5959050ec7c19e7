"""Values aegis.fleet.harden writes verbatim into fail2ban's jail.local and AIDE's
configuration, and the account sshd's AllowGroups must keep admitting."""

from __future__ import annotations

import os
import pwd

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.aegis.fleet.plugins.filter.config_value_errors import config_value_errors
from ansible_collections.aegis.fleet.plugins.modules.hardening_facts import ssh_login

pytestmark = pytest.mark.unit


def test_good_values_give_no_error():
    assert config_value_errors({"ignore": ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]},
                               "network") == []
    assert config_value_errors({"findtime": "10m", "bantime": "1h30m", "n": 600}, "duration") == []
    assert config_value_errors({"paths": ["/etc", "/etc/ssh/ssh_host_.*"]}, "path") == []


def test_each_bad_value_is_named_with_how_to_write_it():
    errors = config_value_errors({"harden_fail2ban_ignore": ["10.0.0.0/8", "x\nmaxretry = 99",
                                                             "10.0.0.0/99"]}, "network")
    assert len(errors) == 2
    assert errors[0].startswith("harden_fail2ban_ignore: 'x\\nmaxretry = 99' is not an IP address")
    assert "e.g. 192.0.2.0/24" in errors[0]
    assert config_value_errors({"bantime": "1 h"}, "duration") == [
        "bantime: '1 h' is not a time such as 10m, 1h or 1h30m (units s, m, h, d, w)"]
    assert len(config_value_errors({"p": ["etc", "/etc bad", True, "/ok"]}, "path")) == 3


def test_a_wrong_kind_or_input_is_refused():
    with pytest.raises(AnsibleFilterError, match="kind must be one of"):
        config_value_errors({"a": "b"}, "port")
    with pytest.raises(AnsibleFilterError, match="must be a dict"):
        config_value_errors(["10.0.0.0/8"], "network")


def test_ssh_login_is_the_sudo_user_with_its_groups(monkeypatch):
    monkeypatch.setenv("SUDO_USER", "root")
    login = ssh_login()
    assert login["user"] == "root"
    assert login["groups"][0] == "root"  # the primary group first
    assert login["groups"].count("root") == 1
    monkeypatch.setenv("SUDO_USER", "no-such-user-aegis")
    assert ssh_login() == {"user": "no-such-user-aegis", "groups": []}
    monkeypatch.delenv("SUDO_USER")
    assert ssh_login()["user"] == pwd.getpwuid(os.getuid()).pw_name
