# -*- coding: utf-8 -*-
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: audit
type: notification
short_description: Record every playbook run on the Aegis audit ledger
version_added: 0.1.0
description:
  - Appends one C(playbook_run) record per playbook run to the Aegis audit ledger (hash-chained,
    signed, checked by C(aegis-controller ledger verify)) naming who ran it (the OS user, or the AWX/Tower
    user and job when the run comes from a job template), which playbook (path and SHA-256), which
    hosts with their ok/changed/failed/unreachable/skipped counts, check mode, start and end time,
    and the result.
  - Nothing secret is recorded; no variables and no task arguments, only the AWX/Tower job
    identifiers among the extra vars.
  - Needs the C(aegis_controller) package and the ledger's signing key on the control node (the
    controller host). When either is missing, or the ledger cannot be written, it warns once and the
    play goes on unaffected.
requirements:
  - the aegis-controller Python package on the control node
  - the ledger signing key (C(aegis-controller keys init))
options:
  state_dir:
    description: Controller state directory (keys, default SQLite database, anchor).
    type: path
    default: /var/lib/aegis/controller
    env:
      - name: AEGIS_CONTROLLER_STATE_DIR
    ini:
      - section: callback_aegis_audit
        key: state_dir
  db_url:
    description: Ledger database URL (SQLAlchemy form); defaults to the SQLite file in O(state_dir).
    type: str
    env:
      - name: AEGIS_CONTROLLER_DB
    ini:
      - section: callback_aegis_audit
        key: db_url
  actor:
    description: Who the record names as actor; defaults to C(awx:<user>) for AWX/Tower jobs, else C(ansible:<OS user>).
    type: str
    env:
      - name: AEGIS_AUDIT_ACTOR
    ini:
      - section: callback_aegis_audit
        key: actor
"""

import getpass
import hashlib
import os
import time

from ansible.plugins.callback import CallbackBase

try:
    from aegis_controller.db import scrub
    from aegis_controller.ledger import open_ledger
    from aegis_controller.settings import Settings

    HAS_AEGIS = True
except ImportError:
    HAS_AEGIS = False

AWX_KEYS = ("awx_job_id", "awx_job_template_name", "awx_user_name", "awx_workflow_job_id",
            "tower_job_id", "tower_job_template_name", "tower_user_name")


def _iso(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _sha256(path):
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except (IOError, OSError):
        return None


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "aegis.fleet.audit"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self.playbook = None
        self.started = time.time()
        self.check_mode = False
        self.job = {}
        self.warned = False

    def _warn(self, msg):
        if not self.warned:
            self._display.warning("aegis.fleet.audit: %s; this run is NOT on the audit ledger" % msg)
            self.warned = True

    def v2_playbook_on_start(self, playbook):
        self.playbook = os.path.abspath(playbook._file_name)
        self.started = time.time()

    def v2_playbook_on_play_start(self, play):
        self.check_mode = self.check_mode or bool(play.check_mode)
        try:
            extra = play.get_variable_manager().extra_vars
        except AttributeError:
            extra = {}
        for key in AWX_KEYS:
            if key in extra and key not in self.job:
                self.job[key] = str(extra[key])

    def _actor(self):
        if self.get_option("actor"):
            return self.get_option("actor")
        user = self.job.get("awx_user_name") or self.job.get("tower_user_name")
        if user:
            return "awx:%s" % user
        try:
            return "ansible:%s" % getpass.getuser()
        except (KeyError, OSError):
            return "ansible:uid%d" % os.getuid()

    def v2_playbook_on_stats(self, stats):
        hosts = {}
        for host in sorted(stats.processed.keys()):
            s = stats.summarize(host)
            hosts[host] = dict((k, s.get(k, 0)) for k in
                               ("ok", "changed", "failures", "unreachable", "skipped", "rescued"))
        failed = any(h["failures"] or h["unreachable"] for h in hosts.values())
        body = {
            "playbook": self.playbook,
            "playbook_sha256": _sha256(self.playbook) if self.playbook else None,
            "hosts": hosts,
            "result": "failed" if failed else "ok",
            "check_mode": self.check_mode,
            "started": _iso(self.started),
            "ended": _iso(time.time()),
            "job": self.job,
        }
        if not HAS_AEGIS:
            self._warn("the aegis_controller package is not importable on this control node")
            return
        settings = Settings.resolve(state_dir=self.get_option("state_dir"),
                                    db_url=self.get_option("db_url"))
        try:
            ledger = open_ledger(settings, write=True)
            try:
                ledger.append("playbook_run", "", body, actor=self._actor())
            finally:
                ledger.engine.dispose()
        except Exception as e:  # never fail the play because the ledger is unreachable
            # the message may quote the database URL: never its password
            self._warn("cannot write the ledger (%s: %s)"
                       % (type(e).__name__, scrub(str(e), settings.db_url)))
