# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action of aegis.fleet.runtime_secret: run the module only when its arguments (the secret)
go through the connection's standard input (pipelining), never through a module file in a
temporary directory on the node, and never write the secret to a file on the control node."""

from __future__ import annotations

from ansible.plugins.action import ActionBase

REFUSED = (
    "aegis.fleet.runtime_secret refuses to run without pipelining: the secret would be written "
    "into a module file in the node's temporary directory (on disk). Set ansible_pipelining: true "
    "on the task (vars:), unset ANSIBLE_KEEP_REMOTE_FILES, do not run it async, and use a "
    "connection that can pipeline (ssh, local; connection %s with become %s here). Nothing was sent."
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        wrap_async = bool(self._task.async_val)
        if wrap_async or not self._is_pipelining_enabled("new", wrap_async=wrap_async):
            become = self._connection.become.name if self._connection.become else "none"
            result.update(failed=True, msg=REFUSED % (self._connection.transport, become))
            return result
        result.update(self._execute_module(module_name="aegis.fleet.runtime_secret",
                                           module_args=self._task.args, task_vars=task_vars))
        return result
