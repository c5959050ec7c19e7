"""The modules' argument specs, checked the way AnsibleModule checks them: a bad argument
fails with a message that names it."""

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.aegis.fleet.plugins.modules import (
    forensics_bundle,
    hardening_facts,
    nft_ruleset,
    quarantine,
    systemd_sandbox,
)

pytestmark = pytest.mark.unit


def _errors(module, args):
    validator = ArgumentSpecValidator(
        module.ARGUMENT_SPEC,
        mutually_exclusive=getattr(module, "MUTUALLY_EXCLUSIVE", None),
        required_if=getattr(module, "REQUIRED_IF", None))
    return " ".join(validator.validate(args).error_messages)


@pytest.mark.parametrize(("module", "args", "needle"), [
    (nft_ruleset, {}, "state is present but all of the following are missing: content"),
    (nft_ruleset, {"state": "absent"}, "any of the following are missing: content, tables"),
    (nft_ruleset, {"content": "table inet a {}", "tables": ["inet a"]},
     "mutually exclusive: content|tables"),
    (nft_ruleset, {"content": "table inet a {}", "state": "up"}, "state must be one of"),
    (nft_ruleset, {"content": "table inet a {}", "rollback_timeout": "ten"}, "'rollback_timeout'"),
    (systemd_sandbox, {"settings": {"PrivateTmp": True}}, "missing required arguments: unit"),
    (systemd_sandbox, {"unit": "cron.service"}, "missing: settings"),
    (systemd_sandbox, {"unit": "cron.service", "settings": ["PrivateTmp"]}, "'settings'"),
    (hardening_facts, {"measure": {"/etc/passwd": True}}, "'measure'"),
    (quarantine, {"mode": "medium"}, "mode must be one of: soft, hard"),
    (quarantine, {"management_peers": {"a": 1}}, "'management_peers'"),
    (forensics_bundle, {}, "missing required arguments: recipient"),
    (forensics_bundle, {"recipient": "age1x", "events_limit": "many"}, "'events_limit'"),
])
def test_bad_arguments_are_named(module, args, needle):
    assert needle in _errors(module, args)


@pytest.mark.parametrize(("module", "args"), [
    (nft_ruleset, {"content": "table inet a {}"}),
    (nft_ruleset, {"tables": ["inet a"], "state": "absent", "rollback_timeout": 0}),
    (nft_ruleset, {"state": "confirmed", "guard_name": "g"}),
    (systemd_sandbox, {"unit": "cron.service", "state": "absent"}),
    (systemd_sandbox, {"unit": "cron.service", "settings": {"PrivateTmp": True}}),
    (hardening_facts, {}),
    (quarantine, {}),
    (quarantine, {"mode": "hard", "management_peers": ["192.0.2.1 tcp/22"], "state": "absent"}),
    (forensics_bundle, {"recipient": "age1x", "incident": "inc-1"}),
])
def test_good_arguments_pass(module, args):
    assert _errors(module, args) == ""
