# -*- coding: utf-8 -*-
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: vault_lease_revoke
type: aggregate
short_description: Revoke the leases aegis.fleet.vault_lease took, before the run returns
version_added: 0.1.0
description:
  - At the end of the run (C(v2_playbook_on_stats), whatever the play's result) and again when
    the ansible-playbook process exits (C(atexit), after Ctrl-C for example) it tells each lease
    keeper of this run (see the M(aegis.fleet.vault_lease) lookup) to revoke its lease now, waits
    for the result, and says how many leases were revoked; a lease that could not be revoked is
    a warning naming the lease id and the reason (the lease then ends at its TTL).
  - Without this callback the keepers still revoke their leases, right after ansible-playbook
    exits but without the run waiting for them; enable it with
    C(callbacks_enabled = aegis.fleet.vault_lease_revoke) (or C(ANSIBLE_CALLBACKS_ENABLED)) so the
    leases are gone before the run returns.
  - Handles lease ids only; it never sees a token or a secret.
options:
  timeout:
    description: Seconds to wait for the keepers at the end of the run.
    type: float
    default: 20
    env:
      - name: AEGIS_VAULT_LEASE_REVOKE_TIMEOUT
    ini:
      - section: callback_aegis_vault_lease_revoke
        key: timeout
seealso:
  - plugin: aegis.fleet.vault_lease
    plugin_type: lookup
"""

import atexit

from ansible.plugins.callback import CallbackBase

from ansible_collections.aegis.fleet.plugins.plugin_utils.vault_lease import flush


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "aegis.fleet.vault_lease_revoke"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        atexit.register(self._flush)

    def _flush(self):
        try:
            timeout = self.get_option("timeout")
        except KeyError:  # options not loaded (the run ended before it started)
            timeout = 20.0
        revoked, failures = flush(timeout=float(timeout))
        if revoked:
            self._display.display("aegis.fleet.vault_lease_revoke: revoked %d lease(s)"
                                  % len(revoked))
            for lease in revoked:
                self._display.vv("aegis.fleet.vault_lease_revoke: revoked %s" % lease)
        for reason in failures:
            self._display.warning("aegis.fleet.vault_lease_revoke: lease not revoked: %s"
                                  % reason)

    def v2_playbook_on_stats(self, stats):
        self._flush()
